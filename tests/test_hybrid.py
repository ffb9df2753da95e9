"""spectral_then_nesterov, auto_nag()'s float64 method: spectral steps until the loss curves
down, then the Nesterov method; and the float32 dispatch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from problems import quadratics
from tests import loops
from tests.x64 import enable_x64


def _rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _steps(q, tx, with_value):
  """(updates to 1e-6 of the initial distance, final x, final state) on the quadratic ``q``."""
  return loops.steps_to_target(
    tx, q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star), 1e-6, 50_000, with_value=with_value
  )


def _param_sized(state, shape):
  return [x for x in jax.tree.leaves(state) if jnp.shape(x) == shape]


def _switched_after_each_update(tx, fun, x0, num_steps):
  """The 1-based numbers of the updates after which the state reads ``switched`` (one scan)."""

  def step(carry, _):
    x, state = carry
    u, state = tx.update(jax.grad(fun)(x), state, x)
    return (optax.apply_updates(x, u), state), optax.tree.get(state, "switched")

  _, flags = jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), None, length=num_steps))(x0)
  return [k + 1 for k, flag in enumerate(np.asarray(flags)) if flag]


def test_auto_switches_to_nesterov_where_the_loss_curves_down(x64):
  # Rosenbrock from (-1.2, 1): the valley curves down within the first 10 steps. After the
  # switch the iterates are those of the Nesterov method started afresh at the switch point,
  # which checks that the shared point and gradient buffers hand over correctly.
  x0 = jnp.array([-1.2, 1.0])
  tx = nag_optax.auto_nag(rtol=None)
  xs, state = loops.iterates(tx, _rosenbrock, x0, 60)
  assert bool(optax.tree.get(state, "switched"))
  switches = _switched_after_each_update(tx, _rosenbrock, x0, 60)
  k_switch = switches[0]  # the update that switched was the k-th; it was taken at xs[k - 1]
  assert k_switch <= 10
  fresh, _ = loops.iterates(
    nag_optax.auto_nag(method="nesterov", rtol=None),
    _rosenbrock,
    xs[k_switch - 1],
    60 - k_switch + 1,
  )
  np.testing.assert_allclose(
    np.asarray(xs[k_switch - 1 :]), np.asarray(fresh), rtol=1e-6, atol=1e-9
  )  # equal up to rounding, which the valley amplifies (4e-9 relative with JAX 0.6)


@pytest.mark.parametrize("dim", [2, 100])
def test_auto_beats_the_nesterov_method_on_rosenbrock(x64, dim):
  x0 = jnp.zeros(dim).at[0].set(-1.2) if dim == 2 else jnp.zeros(dim)
  steps = {}
  for method in ("auto", "nesterov"):
    sol = nag_optax.minimize(
      _rosenbrock, x0, nag_optax.auto_nag(method=method, rtol=1e-8), max_steps=20_000
    )
    assert sol.stop_reason == nag_optax.StopReason.RTOL
    np.testing.assert_allclose(np.asarray(sol.params), np.ones(dim), atol=1e-4)
    steps[method] = int(sol.steps)
  assert steps["auto"] <= steps["nesterov"]  # measured 241 / 899 against 327 / 974


def test_auto_on_a_quadratic_never_switches_and_is_the_spectral_method(x64):
  q = quadratics.make_quadratic(300, 1e4, spacing="log", seed=0)
  k_auto, x_auto, state = _steps(q, nag_optax.auto_nag(rtol=None), False)
  k_spectral, x_spectral, _ = _steps(q, nag_optax.auto_nag(method="spectral", rtol=None), False)
  assert not bool(optax.tree.get(state, "switched"))
  assert k_auto == k_spectral and k_auto <= 1.75 * q.lower_bound_iterations(1e-6)
  np.testing.assert_array_equal(np.asarray(x_auto), np.asarray(x_spectral))


def test_auto_keeps_three_buffers_and_one_readable_value_per_name(x64):
  params = {"w": jnp.zeros((7, 5)), "b": jnp.zeros(5)}
  state = nag_optax.auto_nag().init(params)
  assert len(_param_sized(state, (7, 5))) == 3  # point, gradient, momentum
  for name in ("learning_rate", "rejections", "switched", "momentum", "restarts"):
    assert optax.tree.get(state, name) is not None, name  # found once (a KeyError if twice)
  assert optax.tree.get(state, "condition_number") is not None


def test_auto_in_float32_is_the_nesterov_method():
  q = quadratics.make_quadratic(50, 1e3, seed=3)
  x0 = jnp.asarray(q.x0, jnp.float32)
  runs = {
    method: loops.iterates(nag_optax.auto_nag(method=method), q.value, x0, 100)
    for method in ("auto", "nesterov")
  }
  chex.assert_trees_all_equal_structs(runs["auto"][1], runs["nesterov"][1])
  np.testing.assert_array_equal(np.asarray(runs["auto"][0]), np.asarray(runs["nesterov"][0]))


@pytest.mark.parametrize("float64", [False, True])
def test_auto_with_a_nan_loss_and_a_finite_gradient(float64):
  # NaN past x = 1 on the way to the minimum at 3, with a finite gradient there (the where's
  # other branch). The Nesterov method (float32) leaves the NaN steps to the guard, which skips
  # them and stops with NONFINITE, as before; the spectral steps (float64) reject them and stay
  # on the finite side. Either way no NaN reaches the params.
  def loss(x):
    value = jnp.sum((x - 3.0) ** 2)
    return jnp.where(x[0] > 1.0, jnp.nan, value)

  with enable_x64(float64):
    sol = nag_optax.minimize(loss, jnp.zeros(2), nag_optax.auto_nag(gtol=1e-8), max_steps=1000)
    chex.assert_tree_all_finite(sol.params)
    assert float(sol.params[0]) <= 1.0 and np.isfinite(float(sol.value))
    if not float64:
      assert sol.stop_reason == nag_optax.StopReason.NONFINITE
