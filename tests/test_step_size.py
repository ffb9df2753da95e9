"""scale_by_curvature and scale_by_backtracking: reference loops, convergence, safety."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from problems import quadratics
from tests import loops


def _chain(step_tx, restart="gradient"):
  return optax.chain(step_tx, nag_optax.nesterov(schedule="convex", restart=restart))


def test_curvature_matches_reference_loop(x64):
  q = quadratics.make_quadratic(30, 1e3, seed=1)
  tx = nag_optax.scale_by_curvature()
  x = jnp.asarray(q.x0) + 1.0
  state = tx.init(x)
  y = np.asarray(x)
  prev_y = prev_g = None
  curvature = 0.0
  for k in range(30):
    g = q.matrix @ (y - q.x_star)
    if k == 0:
      step = 1e-4 * max(np.linalg.norm(y), 1.0) / np.linalg.norm(g)
    else:
      curvature = max(curvature, np.linalg.norm(g - prev_g) / np.linalg.norm(y - prev_y))
      step = 1.0 / curvature
    updates, state = tx.update(q.grad(x), state, x)
    np.testing.assert_allclose(np.asarray(updates), -step * g, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(state.learning_rate), step, rtol=1e-12)
    prev_y, prev_g = y, g
    y = y - 0.5 * step * g  # any trajectory: the transformation only sees points and gradients
    x = jnp.asarray(y)
  # The secant estimate never exceeds L, so the step never drops below 1/L.
  assert float(state.curvature) <= q.lipschitz * (1 + 1e-12)
  assert float(state.learning_rate) >= 1.0 / q.lipschitz


def test_cocoercive_decayed_curvature_matches_reference_loop(x64):
  # ell_k = ||dg||^2 / <dg, dy>; L_k = max(0.9 L_{k-1}, ell_k) after a downhill move and
  # max(min(L_{k-1} / 0.9, P_k), ell_k) after an uphill one, P_k the largest ell so far.
  q = quadratics.make_quadratic(30, 1e3, seed=1)
  decay = 0.9
  tx = nag_optax.scale_by_curvature(decay=decay, estimate="cocoercive")
  x = jnp.asarray(q.x0) + 1.0
  state = tx.init(x)
  y = np.asarray(x)
  prev_y = prev_g = None
  curvature = peak = 0.0
  rng = np.random.default_rng(0)
  saw_uphill = saw_downhill = False
  for k in range(40):
    g = q.matrix @ (y - q.x_star)
    if k == 0:
      step = 1e-4 * max(np.linalg.norm(y), 1.0) / np.linalg.norm(g)
    else:
      dy, dg = y - prev_y, g - prev_g
      ell = (dg @ dg) / (dg @ dy)
      secant = np.linalg.norm(dg) / np.linalg.norm(dy)
      assert secant * (1 - 1e-12) <= ell <= q.lipschitz * (1 + 1e-12)
      peak = max(peak, ell)
      if g @ dy > 0:
        saw_uphill = True
        curvature = max(min(curvature / decay, peak), ell)
      else:
        saw_downhill = True
        curvature = max(decay * curvature, ell)
      step = 1.0 / curvature
    updates, state = tx.update(q.grad(x), state, x)
    np.testing.assert_allclose(np.asarray(updates), -step * g, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(float(state.learning_rate), step, rtol=1e-10)
    if k > 0:  # after the probe the step is never below 1/L: L_k <= P_k <= L
      assert float(state.learning_rate) >= 1.0 / q.lipschitz * (1 - 1e-12)
    prev_y, prev_g = y, g
    # Any trajectory: alternate short and long (overshooting) moves so both branches run.
    y = y - rng.uniform(0.2, 2.5) * step * g
    x = jnp.asarray(y)
  assert saw_uphill and saw_downhill
  assert float(state.peak_curvature) <= q.lipschitz * (1 + 1e-12)


def test_backtracking_matches_reference_loop(x64):
  q = quadratics.make_quadratic(20, 1e3, seed=2)
  tx = nag_optax.scale_by_backtracking(initial_step=1e-5)
  x = jnp.asarray(q.x0)
  state = tx.init(x)
  step, total_evals = 1e-5 / 2.0, 0
  y = q.x0.copy()
  for _ in range(25):
    g = q.matrix @ (y - q.x_star)
    f = lambda z: 0.5 * (z - q.x_star) @ q.matrix @ (z - q.x_star)
    step *= 2.0
    evals = 1
    while f(y - step * g) > f(y) - 0.5 * step * (g @ g):
      step *= 0.5
      evals += 1
    total_evals += evals
    updates, state = tx.update(q.grad(x), state, x, value=q.value(x), value_fn=q.value)
    np.testing.assert_allclose(np.asarray(updates), -step * g, rtol=1e-10, atol=1e-14)
    assert int(state.num_backtracking_steps) == evals
    y = y - step * g
    x = jnp.asarray(y)
  assert int(state.function_evals) == total_evals
  # The tiny first guess has recovered: accepted steps are at least 1/(2L).
  assert float(state.learning_rate) >= 0.5 / q.lipschitz


def test_backtracking_chain_converges_and_counts_evaluations(x64):
  q = quadratics.make_quadratic(100, 1e4, seed=5)
  tx = _chain(nag_optax.scale_by_backtracking())
  k, _, state = loops.steps_to_target(
    tx, q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star), 1e-6, 50_000, with_value=True
  )
  assert k <= 4 * q.lower_bound_iterations(1e-6)
  evals = int(optax.tree.get(state, "function_evals"))
  assert k <= evals <= 3 * k


def test_backtracking_without_value_keeps_the_last_step():
  tx = nag_optax.scale_by_backtracking(initial_step=0.1)
  f = lambda x: jnp.sum(x**2)
  x = jnp.ones(3)
  state = tx.init(x)
  _, state = tx.update(jax.grad(f)(x), state, x, value=f(x), value_fn=f)
  accepted = float(state.learning_rate)
  evals_first_call = int(state.function_evals)
  for _ in range(3):
    updates, state = tx.update(jax.grad(f)(x), state, x)
    np.testing.assert_allclose(np.asarray(updates), -accepted * np.asarray(jax.grad(f)(x)))
  assert int(state.function_evals) == evals_first_call >= 1  # nothing evaluated without value_fn
  assert int(state.num_backtracking_steps) == 0
  assert float(state.learning_rate) == accepted


@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan])
def test_backtracking_terminates_on_nonfinite_losses(bad):
  f_bad = lambda x: jnp.where(jnp.sum(x) < 3.0, bad, jnp.sum(x**2))  # inf/NaN below the start
  tx = nag_optax.scale_by_backtracking(initial_step=1.0, max_backtracking_steps=12)
  x = jnp.ones(3)
  state = tx.init(x)
  updates, state = jax.jit(
    lambda s: tx.update(jax.grad(f_bad)(x), s, x, value=f_bad(x), value_fn=f_bad)
  )(state)
  chex.assert_trees_all_equal(updates, jnp.zeros(3))  # nothing accepted: no step
  assert int(state.num_backtracking_steps) == 12
  assert np.isfinite(float(state.learning_rate)) and float(state.learning_rate) > 0


def test_curvature_first_step_backtracking_handles_nonfinite_loss():
  f = lambda x: jnp.where(jnp.max(jnp.abs(x)) > 10.0, jnp.nan, jnp.sum(x**2))
  tx = nag_optax.auto_nag(initial_step=1e6)
  sol = nag_optax.minimize(f, jnp.ones(3), tx, max_steps=500)
  chex.assert_tree_all_finite(sol.params)
  assert float(sol.value) < 1e-6


@pytest.mark.parametrize(
  "factory,kwargs,name",
  [
    (nag_optax.scale_by_curvature, dict(initial_step=0.0), "initial_step"),
    (nag_optax.scale_by_curvature, dict(safety=3.0), "safety"),
    (nag_optax.scale_by_curvature, dict(decay=0.0), "decay"),
    (nag_optax.scale_by_curvature, dict(estimate="hessian"), "estimate"),
    (nag_optax.scale_by_backtracking, dict(initial_step=-1.0), "initial_step"),
    (nag_optax.scale_by_backtracking, dict(increase_factor=0.5), "increase_factor"),
    (nag_optax.scale_by_backtracking, dict(decrease_factor=1.0), "decrease_factor"),
    (nag_optax.scale_by_backtracking, dict(sufficient_decrease=0.0), "sufficient_decrease"),
    (nag_optax.scale_by_backtracking, dict(max_backtracking_steps=0), "max_backtracking_steps"),
  ],
)
def test_bad_configuration_raises(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)
