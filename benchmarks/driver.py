"""The run-to-target driver of the full-batch suites (``quadratic``, ``logistic``, ``fullbatch``).

:func:`run_to_target` iterates an Optax optimizer inside one jitted ``lax.while_loop`` until a
metric falls to ``tol``, counting gradient and function evaluations the same way for every
method. :func:`run_method` runs one row of a suite (a learning-rate grid as one compiled call) and
keeps the best lane; :func:`run_problem` runs every row on one problem; :func:`suite_result`
wraps the problems into a ``report.SuiteResult``. The cells of the suites' comparison tables
(:func:`iterations_cell`, :func:`ratio`, :func:`geometric_mean`) are here too, so that every
full-batch suite counts and prints alike.

Everything a run depends on is an argument that may be traced: problem data, ``tol``,
``max_steps`` and ``record_every``. One compilation then serves every problem of the same shape,
and ``jax.vmap`` (or ``jax.lax.map``) runs a learning-rate grid in one call.
"""

import math
import time
from typing import Any
from typing import Callable
from typing import Literal
from typing import NamedTuple
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import report
from benchmarks.methods import Method

# The target of every full-batch suite: the metric (a relative distance or gradient norm) at 1e-6.
TOL = 1e-6

# Slots of the metric history kept for the plots. Fixed, so that the history's shape does not
# depend on the problem and one compiled solver serves all of them.
HISTORY_SIZE = 2048

# A run whose metric exceeds this (or is not finite) has diverged and stops early.
DIVERGED = 1e8

# A solver: (problem data, learning rate) -> RunResult, traced.
Solve = Callable[[Any, Any], "RunResult"]
# An objective: problem data -> (loss, metric), both functions of the params.
Objective = Callable[[Any], tuple[Callable[[Any], Any], Callable[[Any], Any]]]


def record_every(steps: int) -> int:
  """The recording interval that fits ``steps`` steps of metric history into ``HISTORY_SIZE``."""
  return max(1, math.ceil(steps / HISTORY_SIZE))


class RunResult(NamedTuple):
  """What one run to a target produced; arrays (batched under vmap), or host numbers."""

  steps: Any  # iterations taken (updates applied).
  reached: Any  # bool: metric <= tol when the loop stopped.
  diverged: Any  # bool: metric went non-finite or above DIVERGED.
  metric: Any  # metric at the final iterate.
  grad_evals: Any  # gradient evaluations, line searches included.
  function_evals: Any  # function evaluations, line searches included.
  history: Any  # metric at steps 0, record_every, 2 record_every, ...; NaN after the end.


def iterate_to_target(
  step_fn: Callable[[Any], Any],
  carry: Any,
  metric_fn: Callable[[Any], Any],
  *,
  tol: Any,
  max_steps: Any,
  record_every: Any,
) -> tuple[Any, RunResult]:
  """``carry = step_fn(carry)`` in a ``lax.while_loop`` until ``metric_fn(carry) <= tol``.

  Stops also at ``max_steps`` or when the metric diverges. The metric is recorded every
  ``record_every`` steps into a fixed-size history. Returns the final carry and a
  :class:`RunResult` whose evaluation counts are left at zero for the caller to fill in.
  """
  metric0 = metric_fn(carry)
  dtype = metric0.dtype
  history = jnp.full((HISTORY_SIZE,), jnp.nan, dtype).at[0].set(metric0)
  record_every = jnp.maximum(jnp.asarray(record_every, jnp.int32), 1)

  def cond(loop):
    step, _, metric, _ = loop
    healthy = jnp.isfinite(metric) & (metric <= DIVERGED)
    return (step < max_steps) & (metric > tol) & healthy

  def body(loop):
    step, carry, _, history = loop
    carry = step_fn(carry)
    step = step + 1
    metric = metric_fn(carry)
    # Off-record steps (and slots past the end) point outside the history and are dropped.
    slot = jnp.where(step % record_every == 0, step // record_every, HISTORY_SIZE)
    history = history.at[slot].set(metric, mode="drop")
    return step, carry, metric, history

  step, carry, metric, history = jax.lax.while_loop(
    cond, body, (jnp.asarray(0, jnp.int32), carry, metric0, history)
  )
  zero = jnp.asarray(0, jnp.int32)
  result = RunResult(
    steps=step,
    reached=metric <= tol,
    diverged=~jnp.isfinite(metric) | (metric > DIVERGED),
    metric=metric,
    grad_evals=zero,
    function_evals=zero,
    history=history,
  )
  return carry, result


def run_to_target(
  optimizer: optax.GradientTransformation,
  fun: Callable[[Any], Any],
  x0: Any,
  target_fn: Callable[[Any], Any],
  max_steps: Any,
  record_every: Any,
  *,
  tol: Any,
  uses_value: bool = False,
  value_from_linesearch: bool = False,
  pass_extra_args: bool = True,
  count_value: bool = True,
) -> RunResult:
  """Runs ``optimizer`` on ``fun`` from ``x0`` until ``target_fn(params) <= tol``.

  Each step is exactly an Optax loop with extra arguments::

    value, grad = jax.value_and_grad(fun)(params)
    updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    params = optax.apply_updates(params, updates)

  Args:
    optimizer: any Optax transformation (a plain ``GradientTransformation`` gets no extra
      arguments).
    fun: the objective, params -> scalar.
    x0: initial params.
    target_fn: params -> nonnegative scalar metric (e.g. relative distance to the minimiser).
    max_steps: cap on iterations.
    record_every: record the metric every this many steps (for plots).
    tol: the run has reached its target when the metric is ``<= tol``.
    uses_value: count one function evaluation per step (the optimizer reads ``value``).
      Otherwise only the gradient is computed by the driver.
    value_from_linesearch: take value and gradient from the state of a line search (as
      ``optax.value_and_grad_from_state``, the way ``optax.lbfgs`` is meant to be run) and count
      evaluations as 1 + the sum of the line search's ``num_linesearch_steps``.
    pass_extra_args: False runs the gradient-only path (no ``value``/``grad``/``value_fn``, as
      Flax's ``TrainState.apply_gradients``).
    count_value: False when the value comes with the gradient from ``value_and_grad`` and is not
      a separate evaluation; only ``value_fn`` calls (``function_evals`` fields) are counted.

  Returns:
    A :class:`RunResult`. Function evaluations also include the final value of every state
    field named ``function_evals`` (the counters of nag_optax's line-search blocks).
  """
  if value_from_linesearch:
    value_and_grad = optax.value_and_grad_from_state(fun)
  elif uses_value:
    value_and_grad = lambda params, state: jax.value_and_grad(fun)(params)
  else:
    value_and_grad = lambda params, state: (None, jax.grad(fun)(params))

  def step_fn(carry):
    params, state, linesearch_evals = carry
    value, grad = value_and_grad(params, state=state)
    if pass_extra_args and isinstance(optimizer, optax.GradientTransformationExtraArgs):
      updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    else:
      updates, state = optimizer.update(grad, state, params)
    params = optax.apply_updates(params, updates)
    if value_from_linesearch:
      linesearch_evals = linesearch_evals + jnp.asarray(
        optax.tree.get(state, "num_linesearch_steps", 0), jnp.int32
      )
    return params, state, linesearch_evals

  carry = (x0, optimizer.init(x0), jnp.asarray(0, jnp.int32))
  (_, state, linesearch_evals), result = iterate_to_target(
    step_fn,
    carry,
    lambda c: target_fn(c[0]),
    tol=tol,
    max_steps=max_steps,
    record_every=record_every,
  )
  steps = result.steps
  if value_from_linesearch:
    # The first value_and_grad is a real call; later ones are read from the line search.
    grad_evals = jnp.where(steps > 0, 1 + linesearch_evals, 0)
    function_evals = grad_evals
  else:
    grad_evals = steps
    function_evals = steps if uses_value and count_value else jnp.zeros_like(steps)
  # Summed over every block that counts its own evaluations (a chain may hold several).
  for _, count in optax.tree_utils.tree_get_all_with_path(state, "function_evals"):
    function_evals = function_evals + jnp.asarray(count, jnp.int32)
  return result._replace(
    grad_evals=jnp.asarray(grad_evals, jnp.int32),
    function_evals=jnp.asarray(function_evals, jnp.int32),
  )


def relative_gradient_norm(fun: Callable[[Any], Any], x0: Any) -> Callable[[Any], Any]:
  """The metric ``||grad f(x)|| / ||grad f(x0)||`` (norms over the whole params tree)."""
  grad = jax.grad(fun)
  initial = optax.tree.norm(grad(x0))
  return lambda x: optax.tree.norm(grad(x)) / initial


# ---------------------------------------------------------------------------------------------
# Rows every full-batch suite runs: make(data, learning_rate) -> optimizer.


def lbfgs(memory_size: Optional[int] = None) -> Method:
  """``optax.lbfgs()`` (its default 10 curvature pairs) or ``optax.lbfgs(memory_size=m)``, run
  the way it is meant to (value and gradient from its zoom line search's state)."""
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


def tuned_baselines(sgd_grid: Sequence[float], adam_grid: Sequence[float]) -> list[Method]:
  """sgd-nesterov and adam, each the best lane of its learning-rate grid."""
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


# ---------------------------------------------------------------------------------------------
# Running rows: compiled ahead of time, timed apart from compilation.


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[Callable[..., Any], float]:
  """``jax.jit(fn)`` compiled ahead of time for ``args``; returns it and the seconds it took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def call_timed(compiled: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """Runs a compiled function to completion; returns its (host) result and wall seconds."""
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - start
  return jax.device_get(out), seconds


class Compiled:
  """A suite's compiled solvers by key, and the compile time per row name (its footer)."""

  def __init__(self) -> None:
    self.programs: dict[Any, Callable[..., Any]] = {}
    self.seconds: dict[str, float] = {}

  def get(self, key: Any, name: str, fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """The program under ``key``, compiled for ``args`` the first time (timed under ``name``)."""
    if key not in self.programs:
      self.programs[key], self.seconds[name] = compile_timed(fn, *args)
    return self.programs[key]


def solver(method: Method, objective: Objective) -> Solve:
  """``method.solve``, or ``method.make(data, learning_rate)`` run by :func:`run_to_target` on
  ``objective(data) = (fun, metric)``.

  ``data`` is a dict of (traceable) arrays holding ``x0``, ``tol``, ``max_steps`` and
  ``record_every`` besides what ``objective`` reads.
  """
  if method.solve is not None:
    return method.solve

  def solve(data, learning_rate):
    fun, metric = objective(data)
    return run_to_target(
      method.build(data, learning_rate),
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


def history(values: Any) -> list[Optional[float]]:
  """A recorded metric for the report: 4 significant digits (plenty for a log-scale plot, and
  the JSON stays small), ``None`` where not finite, the unused slots after the run dropped."""
  out = [float(f"{v:.4g}") if math.isfinite(v) else None for v in np.asarray(values)]
  while out and out[-1] is None:
    out.pop()
  return out


def method_run(
  name: str,
  needs: str,
  result: RunResult,
  seconds: float,
  every: int,
  lane: Optional[int] = None,
  note: str = "",
  extra: Optional[dict] = None,
) -> report.MethodRun:
  """A host :class:`RunResult` (one ``lane`` of it for a grid) as a ``report.MethodRun``."""
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


def best_lane(result: RunResult) -> int:
  """The grid lane that reached the target in the fewest steps; if none did, the lowest
  finite final metric."""
  reached = np.asarray(result.reached)
  if reached.any():
    return int(np.argmin(np.where(reached, np.asarray(result.steps), np.iinfo(np.int32).max)))
  metric = np.asarray(result.metric)
  return int(np.argmin(np.where(np.isfinite(metric), metric, np.inf)))


def grid_records(learning_rates: Any, result: RunResult) -> list[dict]:
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


def run_method(
  method: Method,
  solve: Solve,
  data: dict,
  every: int,
  compiled: Compiled,
  key: Any = None,
  lanes: Literal["vmap", "map"] = "vmap",
) -> report.MethodRun:
  """Runs ``solve(data, learning_rate)``, or all of ``method.grid`` in one call, and reports it.

  Compiles ahead of time once per ``key`` (default: the method's name). A grid runs as one
  ``jax.vmap`` (``lanes="vmap"``: every lane as long as the slowest) or ``jax.lax.map``
  (``"map"``: each lane stops at its own target); the best lane (:func:`best_lane`) is reported,
  its learning rate in the note, every lane in ``extra["grid"]``. Wall time: the whole call (the
  whole grid).
  """
  key = method.name if key is None else key
  if method.grid is None:
    learning_rate, fn = jnp.asarray(0.0), solve
  elif lanes == "vmap":
    learning_rate, fn = jnp.asarray(method.grid), jax.vmap(solve, in_axes=(None, 0))
  else:
    learning_rate = jnp.asarray(method.grid)
    fn = lambda d, rates: jax.lax.map(lambda rate: solve(d, rate), rates)
  program = compiled.get(key, method.name, fn, data, learning_rate)
  out, seconds = call_timed(program, data, learning_rate)
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


def run_problem(
  rows: Sequence[Method],
  objective: Objective,
  data: dict,
  every: int,
  compiled: Compiled,
  progress: report.Progress,
  *,
  label: str,
  key: Any = None,
  lanes: Literal["vmap", "map"] = "vmap",
) -> list[report.MethodRun]:
  """Every row on one problem, through :func:`run_method`, one progress tick each.

  ``key`` tells problems of different shapes apart in the compiled cache (a row compiles once
  per ``(name, key)``); None when every problem of the suite has the same shape.
  """
  runs = []
  for m in rows:
    progress.set_postfix_str(f"{label}: {m.name[:28]}")
    runs.append(
      run_method(
        m,
        solver(m, objective),
        data,
        every,
        compiled,
        key=None if key is None else (m.name, key),
        lanes=lanes,
      )
    )
    progress.update(1)
  return runs


def suite_result(
  name: str,
  title: str,
  description: str,
  metric_label: str,
  mode: str,
  problems: list[report.ProblemResult],
  notes: list[str],
  compiled: Compiled,
  start: float,
) -> report.SuiteResult:
  """A full-batch suite's result: target :data:`TOL`, compile times, wall time since ``start``."""
  return report.SuiteResult(
    name=name,
    title=title,
    description=description,
    metric_label=metric_label,
    tol=TOL,
    mode=mode,
    problems=problems,
    notes=notes,
    compile_time_s=compiled.seconds,
    total_time_s=time.perf_counter() - start,
  )


# ---------------------------------------------------------------------------------------------
# Cells of the suites' comparison tables.


def iterations_cell(run: report.MethodRun) -> str:
  """Iterations to the target, or "-" for a miss."""
  return f"{run.steps:,}" if run.reached else "-"


def ratio(run: report.MethodRun, reference: report.MethodRun) -> Optional[float]:
  """Iterations of ``run`` over those of ``reference``; None unless both reached the target."""
  if run.reached and reference.reached and run.steps is not None and reference.steps:
    return run.steps / reference.steps
  return None


def ratio_cell(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.2f}"


def geometric_mean(values: Sequence[float]) -> float:
  return float(np.exp(np.mean(np.log(values)))) if values else float("nan")
