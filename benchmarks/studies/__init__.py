"""Studies: one-off measurements run by hand, not suites of the runner.

A study answers one question with a script (``python -m benchmarks.studies.NAME``), prints its
numbers and writes nothing to ``RESULTS.md``; ``docs/design_decisions.md`` cites the studies
behind the defaults. Studies use only the public functions of the suites.
"""


def seed_range(text: str) -> list[int]:
  """``"10-14"`` -> ``[10, 11, 12, 13, 14]``; ``"7"`` -> ``[7]``."""
  low, _, high = text.partition("-")
  return list(range(int(low), int(high or low) + 1))
