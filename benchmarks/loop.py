"""The one jitted driver the benchmark suites share: iterate an optimizer until a target.

Everything here is traceable: hyperparameters, problem data, ``tol``, ``max_steps`` and
``record_every`` may all be traced arrays, so one compilation serves every problem of the same
shape and ``jax.vmap`` runs a learning-rate grid in one call. Suites build a function
``solve(problem_data, hyperparameters) -> RunResult`` around :func:`run_to_target`, and
:func:`compile_timed` compiles it ahead of time so that compile time and run time are measured
separately.
"""

import time
from typing import Any
from typing import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Slots of the metric history kept for the plots. Fixed, so that the history's shape does not
# depend on the problem and one compiled solver serves all of them.
HISTORY_SIZE = 2048

# A run whose metric exceeds this (or is not finite) has diverged and stops early.
DIVERGED = 1e8


class RunResult(NamedTuple):
  """What one run to a target produced; all fields are arrays (batched under vmap)."""

  steps: jax.Array  # iterations taken (updates applied).
  reached: jax.Array  # bool: metric <= tol when the loop stopped.
  diverged: jax.Array  # bool: metric went non-finite or above DIVERGED.
  metric: jax.Array  # metric at the final iterate.
  grad_evals: jax.Array  # gradient evaluations, line searches included.
  function_evals: jax.Array  # function evaluations, line searches included.
  history: jax.Array  # metric at steps 0, record_every, 2 record_every, ...; NaN after the end.


def iterate_to_target(
  step_fn: Callable[[Any], Any],
  carry: Any,
  metric_fn: Callable[[Any], Any],
  *,
  tol,
  max_steps,
  record_every,
) -> tuple[Any, RunResult]:
  """``carry = step_fn(carry)`` in a ``lax.while_loop`` until ``metric_fn(carry) <= tol``.

  Stops also at ``max_steps`` or when the metric diverges. The metric is recorded every
  ``record_every`` steps into a fixed-size history. Returns the final carry and a
  :class:`RunResult` whose eval counts are left at zero for the caller to fill in.
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
  max_steps,
  record_every,
  *,
  tol,
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
    optimizer: any Optax transformation (extra arguments it does not know are not passed to a
      plain ``GradientTransformation``).
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
  extra = pass_extra_args and isinstance(optimizer, optax.GradientTransformationExtraArgs)

  def step_fn(carry):
    params, state, linesearch_evals = carry
    value, grad = value_and_grad(params, state=state)
    if extra:
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


def compile_timed(fn: Callable[..., Any], *args) -> tuple[Callable[..., Any], float]:
  """``jax.jit(fn)`` compiled ahead of time for ``args``; returns it and the seconds it took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def call_timed(compiled: Callable[..., Any], *args) -> tuple[Any, float]:
  """Runs a compiled function to completion; returns its (host) result and wall seconds."""
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - start
  return jax.device_get(out), seconds
