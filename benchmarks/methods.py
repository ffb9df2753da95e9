"""What a suite compares: the ``Method`` type every suite lists its rows with, and how a run of
one (or of one learning-rate grid) becomes a ``report.MethodRun``.

A suite keeps a tuple ``METHODS`` of :class:`Method`. The run-to-target suites (``quadratic``,
``logistic``) run each through :func:`solver` (the shared driver ``loop.run_to_target``) or a
solver of its own (``Method.solve``), and :func:`run` runs it, over its learning-rate grid as one
compiled call when it has one, and keeps the best lane.
"""

import dataclasses
import math
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from benchmarks import loop
from benchmarks import report


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of a suite: an optimizer (or a whole solver), and what running it needs.

  ``make`` builds the optimizer, with the suite's arguments: ``make(data, learning_rate)`` in the
  run-to-target suites (inside the traced solver, from traced problem data), ``make()`` in
  ``step_cost``, ``make(learning_rate, budget)`` in ``workloads``.
  """

  name: str
  make: Optional[Callable[..., Any]] = None
  needs: str = "—"  # what a user must know or supply: "L and mu", "f values", "tuning", "—"
  grid: Optional[Sequence[float]] = None  # learning rates tried; the best lane is reported
  # How the driver calls it (``loop.run_to_target``'s options; ``step_cost`` passes value,
  # grad and value_fn exactly when ``uses_value``).
  uses_value: bool = False
  value_from_linesearch: bool = False
  pass_extra_args: bool = True
  count_value: bool = True
  # ``solve(data, learning_rate) -> loop.RunResult``: a solver of its own instead of ``make``
  # and the shared driver (a line search counted its own way, a non-Optax solver).
  solve: Optional[Callable[[Any, Any], loop.RunResult]] = None
  kind: str = ""  # a suite's grouping of rows (workloads: "baseline", "peer", "nag_optax")
  eval_params: Optional[Callable[[Any, Any], Any]] = None  # (params, state) -> evaluated params
  requires: Optional[str] = None  # a nag_optax attribute that must exist (an upcoming API)

  @property
  def available(self) -> bool:
    return self.requires is None or hasattr(nag_optax, self.requires)


def lbfgs(memory_size: Optional[int] = None) -> Method:
  """``optax.lbfgs()`` (its default 10 curvature pairs) or ``optax.lbfgs(memory_size=m)``, run
  the way it is meant to (value and gradient from its zoom line search's state), for the
  run-to-target suites."""
  if memory_size is None:
    return Method(
      "optax.lbfgs()", lambda _, lr: optax.lbfgs(), needs="f values", value_from_linesearch=True
    )
  return Method(
    f"optax.lbfgs(memory_size={memory_size})",
    lambda _, lr: optax.lbfgs(memory_size=memory_size),
    needs="f values",
    value_from_linesearch=True,
  )


def tuned_baselines(sgd_grid: Sequence[float], adam_grid: Sequence[float]) -> list:
  """The tuned full-batch baselines both convex suites run: sgd-nesterov and adam, each the best
  lane of its learning-rate grid."""
  return [
    Method(
      "optax.sgd(nesterov=True) 0.9, best of lr grid",
      lambda _, lr: optax.sgd(lr, 0.9, nesterov=True),
      needs="tuning",
      grid=tuple(sgd_grid),
    ),
    Method(
      "optax.adam, best of lr grid",
      lambda _, lr: optax.adam(lr),
      needs="tuning",
      grid=tuple(adam_grid),
    ),
  ]


def solver(method: Method, objective: Callable[[Any], tuple]) -> Callable[[Any, Any], Any]:
  """``solve(data, learning_rate) -> loop.RunResult``: ``method.solve``, or ``method.make(data,
  learning_rate)`` run by ``loop.run_to_target`` on ``objective(data) = (fun, metric)``.

  ``data`` is a dict of (traceable) arrays holding ``x0``, ``tol``, ``max_steps`` and
  ``record_every`` besides what ``objective`` reads.
  """
  if method.solve is not None:
    return method.solve

  def solve(data, learning_rate):
    fun, metric = objective(data)
    return loop.run_to_target(
      method.make(data, learning_rate),
      fun,
      data["x0"],
      metric,
      data["max_steps"],
      data["record_every"],
      tol=data["tol"],
      uses_value=method.uses_value,
      value_from_linesearch=method.value_from_linesearch,
      pass_extra_args=method.pass_extra_args,
      count_value=method.count_value,
    )

  return solve


def history(values) -> list:
  """A recorded metric for the report: 4 significant digits (plenty for a log-scale plot, and
  the JSON stays small), ``None`` where not finite, the unused slots after the run dropped."""
  out = [float(f"{v:.4g}") if math.isfinite(v) else None for v in np.asarray(values)]
  while out and out[-1] is None:
    out.pop()
  return out


def method_run(
  name: str,
  needs: str,
  result,
  seconds: float,
  every: int,
  lane=None,
  note: str = "",
  extra: Optional[dict] = None,
) -> report.MethodRun:
  """A ``loop.RunResult`` (one ``lane`` of it for a grid) as a ``report.MethodRun``."""
  pick = (lambda x: np.asarray(x)[lane]) if lane is not None else np.asarray
  return report.MethodRun(
    method=name,
    needs=needs,
    steps=int(pick(result.steps)),
    reached=bool(pick(result.reached)),
    grad_evals=int(pick(result.grad_evals)),
    function_evals=int(pick(result.function_evals)),
    wall_time_s=seconds,
    final_metric=float(pick(result.metric)),
    history=history(pick(result.history)),
    history_every=every,
    note=note,
    extra=extra or {},
  )


def best_lane(result) -> int:
  """The grid lane that reached the target in the fewest steps; if none did, the lowest
  finite final metric."""
  reached = np.asarray(result.reached)
  if reached.any():
    return int(np.argmin(np.where(reached, np.asarray(result.steps), np.iinfo(np.int32).max)))
  metric = np.asarray(result.metric)
  return int(np.argmin(np.where(np.isfinite(metric), metric, np.inf)))


def grid_records(learning_rates, result) -> list:
  """Every lane of a grid run, for the JSON: learning rate, steps, reached, diverged, metric."""
  return [
    dict(
      learning_rate=float(learning_rates[i]),
      steps=int(result.steps[i]),
      reached=bool(result.reached[i]),
      diverged=bool(result.diverged[i]),
      final_metric=float(result.metric[i]),
    )
    for i in range(len(learning_rates))
  ]


def run(
  method: Method,
  solve: Callable[[Any, Any], Any],
  data,
  every: int,
  compiled: dict,
  compile_time: dict,
  key: Any = None,
  lanes: str = "vmap",
) -> report.MethodRun:
  """Runs ``solve(data, learning_rate)``, or all of ``method.grid`` in one call, and reports it.

  Compiles ahead of time once per ``key`` (default: the method's name) into ``compiled`` and
  records the compile time under the method's name. A grid runs as one ``jax.vmap`` (``lanes=
  "vmap"``: every lane as long as the slowest) or ``jax.lax.map`` (``"map"``: each lane stops at
  its own target); the best lane (:func:`best_lane`) is reported, its learning rate in the note,
  every lane in ``extra["grid"]``. Wall time: the whole call (the whole grid).
  """
  key = method.name if key is None else key
  if method.grid is None:
    learning_rate, fn = jnp.asarray(0.0), solve
  elif lanes == "vmap":
    learning_rate, fn = jnp.asarray(method.grid), jax.vmap(solve, in_axes=(None, 0))
  else:
    learning_rate = jnp.asarray(method.grid)
    fn = lambda d, rates: jax.lax.map(lambda rate: solve(d, rate), rates)
  if key not in compiled:
    compiled[key], compile_time[method.name] = loop.compile_timed(fn, data, learning_rate)
  out, seconds = loop.call_timed(compiled[key], data, learning_rate)
  if method.grid is None:
    return method_run(method.name, method.needs, out, seconds, every)
  lane = best_lane(out)
  return method_run(
    method.name,
    method.needs,
    out,
    seconds,
    every,
    lane=lane,
    note=f"lr {float(learning_rate[lane]):.3g}",
    extra=dict(grid=grid_records(learning_rate, out)),
  )
