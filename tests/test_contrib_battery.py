"""A faithful re-implementation of ``test_optimizers`` from Optax's contrib battery.

Optax checks every contributed optimizer (``optax/contrib/_common_test.py``, optax 0.2.8, which
ships in site-packages) by running it for 30,000 jitted steps in float32 on four targets (a
parabola from (-1, 10, 1), Rosenbrock from (0, 0), a 2x2 matrix parabola and a mixed 1D/2D
tuple target, both from zeros) and asserting the iterate is within ``rtol=atol=3e-2`` of the
minimiser; ``value=`` is passed only to optimizers that read it (there: momo and the
``reduce_on_plateau`` wrapper), and ``optax.tree.map_params`` must accept the state. This file
re-states the same problems, starting points, dtype, step count, tolerances and ``value``
handling in our own code, and ``test_optimizers_accept_extra_args`` likewise (an unexpected
keyword argument to ``update`` is ignored, no recompilation on the second call), so our
self-tuning optimizers face exactly the bar Optax sets for its
own contrib optimizers; ``optax.contrib.prodigy`` (with the battery's own kwargs) runs alongside
as a control that must pass and so proves the harness right. An optimizer may fail a target only
through ``KNOWN_FAILURES`` (strict xfail), so the day it starts passing is visible.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import nag_optax

# (optimizer name, case) -> why it fails today; a case is a target name of ``test_optimizers`` or
# "extra_args" (``test_optimizers_accept_extra_args``). Strict xfail: an entry that starts
# passing fails the suite, so delete it then. Every case not listed here must pass.
KNOWN_FAILURES = {}

NUM_STEPS = 30_000  # as in optax's test_optimizers
RTOL = ATOL = 3e-2  # as in optax's test_optimizers
DTYPE = jnp.float32  # optax's test_optimizers runs dtype=('float32',) only

# name -> (factory, pass value= to update). Optax passes ``value`` only to the optimizers that
# consume it (momo, momo_adam, the reduce_on_plateau wrapper); ours feed it to their
# reduce_on_plateau decay, so they get it, and prodigy (which ignores it) does not.
OPTIMIZERS = {
  "prodigy": (lambda: optax.contrib.prodigy(learning_rate=1e-1), False),  # battery's kwargs
  "auto_nag_sgd": (lambda: nag_optax.auto_nag_sgd(), True),
  "auto_nadamw": (lambda: nag_optax.auto_nadamw(), True),
  # The full-batch spectral method (not a minibatch optimizer): gradient-only, as Optax's
  # battery passes no value to it.
  "auto_nag_spectral": (lambda: nag_optax.auto_nag(method="spectral", rtol=None), False),
}


def _sq(x):
  return jnp.real(jnp.conj(x) * x)  # optax.numerics.abs_sq


def _parabola():
  start = jnp.array([-1.0, 10.0, 1.0], DTYPE)
  solution = jnp.array([1.0, -1.0, 1.0], DTYPE)
  return start, solution, lambda p: jnp.sum(_sq(p - solution))


def _rosenbrock():
  a, b = 1.0, 100.0
  start = jnp.zeros((2,), DTYPE)
  solution = jnp.array([a, a * a], DTYPE)
  return start, solution, lambda p: _sq(a - p[0]) + b * _sq(p[1] - p[0] ** 2)


def _matrix_parabola():
  start = jnp.zeros((2, 2), DTYPE)
  solution = jnp.array([[3.0, -2.0], [1.0, 4.0]], DTYPE)
  return start, solution, lambda p: jnp.sum(_sq(p - solution))


def _mixed_tensor():
  solution = (jnp.array([1.0, -1.0, 2.0], DTYPE), jnp.array([[1.0, 0.0], [-1.0, 1.0]], DTYPE))
  start = (jnp.zeros((3,), DTYPE), jnp.zeros((2, 2), DTYPE))

  def objective(p):
    return jnp.sum(_sq(p[0] - solution[0])) + jnp.sum(_sq(p[1] - solution[1]))

  return start, solution, objective


TARGETS = {
  "parabola": _parabola,
  "rosenbrock": _rosenbrock,
  "matrix_parabola": _matrix_parabola,
  "mixed_tensor": _mixed_tensor,
}


EXTRA_ARGS = "extra_args"


def _params(cases):
  for opt_name in OPTIMIZERS:
    for case in cases:
      reason = KNOWN_FAILURES.get((opt_name, case))
      marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
      yield pytest.param(opt_name, case, marks=marks, id=f"{opt_name}-{case}")


def test_known_failures_name_real_cases():
  for opt_name, case in KNOWN_FAILURES:
    assert case in TARGETS or case == EXTRA_ARGS, case
    # an entry for an optimizer not built today (auto_nadamw before it lands) is allowed
    assert opt_name in OPTIMIZERS or opt_name == "auto_nadamw", opt_name


@pytest.mark.parametrize("opt_name,case", list(_params([EXTRA_ARGS])))
def test_optimizers_accept_extra_args(opt_name, case):
  del case
  factory, pass_value = OPTIMIZERS[opt_name]
  opt = factory()
  start, _, objective = _rosenbrock()
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)  # runs once per trace
    value, grads = jax.value_and_grad(objective)(params)
    kwargs = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
    if pass_value:
      kwargs["value"] = value
    updates, state = opt.update(grads, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  params, state = start, opt.init(start)
  for _ in range(2):  # update works with extra args
    params, state = step(params, state)
  chex.assert_tree_all_finite(params)

  params, state = step(start, opt.init(start))  # no recompilation on the second call
  n_traces = len(traces)
  jax.block_until_ready(step(params, state))
  assert len(traces) == n_traces, "optimizer recompiles on the second call to update"


@pytest.mark.parametrize("opt_name,target_name", list(_params(TARGETS)))
def test_optimizers(opt_name, target_name):
  factory, pass_value = OPTIMIZERS[opt_name]
  opt = factory()
  start, solution, objective = TARGETS[target_name]()

  state = opt.init(start)
  state = optax.tree.map_params(opt, lambda v: v, state)  # no-op: tree_map_params must work

  @jax.jit
  def run(params, state):
    def step(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(objective)(params)
      kwargs = {"value": value} if pass_value else {}
      updates, state = opt.update(grads, state, params, **kwargs)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, state), length=NUM_STEPS)
    return params

  params = jax.block_until_ready(run(start, state))
  chex.assert_trees_all_close(params, solution, rtol=RTOL, atol=ATOL)
