"""Benchmarks of nag_optax against its peers. Run with ``python -m benchmarks`` from the repo root.

Never imported by the package or by the tests.
"""
