"""Test problems with known answers, shared by the tests (``tests/``) and the benchmarks
(``benchmarks/``), which do not import each other.

Not part of the installed package (``nag_optax`` is); importable from the repository root, where
pytest and ``python -m benchmarks`` run.
"""
