"""What a suite compares: the ``Method`` type every suite lists its rows with."""

import dataclasses
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of a suite: an optimizer (or a whole solver), and what running it needs.

  ``make`` builds the optimizer from the suite's arguments: ``make(data, learning_rate)`` in the
  full-batch suites (inside the traced solver, from traced problem data), ``make()`` in
  ``step_cost``, ``make(learning_rate, budget)`` in ``workloads``.
  """

  name: str
  make: Optional[Callable[..., Any]] = None  # None for a row with a solver of its own (``solve``)
  needs: str = "—"  # what a user must know or supply: "L and mu", "f values", "tuning", "—"
  grid: Optional[Sequence[float]] = None  # learning rates tried; the best lane is reported
  # How the driver calls it (``driver.run_to_target``'s options; ``step_cost`` passes value,
  # grad and value_fn exactly when ``uses_value``).
  uses_value: bool = False
  value_from_linesearch: bool = False
  pass_extra_args: bool = True
  count_value: bool = True
  # ``solve(data, learning_rate) -> driver.RunResult``: a solver of its own instead of ``make``
  # and the shared driver (a line search counted its own way, a non-Optax solver).
  solve: Optional[Callable[[Any, Any], Any]] = None
  kind: str = ""  # a suite's grouping of rows (workloads: "baseline", "peer", "nag_optax")
  eval_params: Optional[Callable[[Any, Any], Any]] = None  # (params, state) -> evaluated params

  def build(self, *args: Any) -> Any:
    """The optimizer, ``make(*args)``; a row with a solver of its own (``solve``) has none."""
    if self.make is None:
      raise ValueError(f"{self.name!r} has a solver of its own and builds no optimizer")
    return self.make(*args)
