"""scale_by_curvature, scale_by_backtracking and auto_nag: reference loops, convergence, safety."""

import math

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


def _auto_nag_steps(q, tx=None, *, with_value=False):
  """(updates to ||x - x*|| <= 1e-6 ||x0 - x*||, final x, final state) of auto_nag on ``q``."""
  tx = nag_optax.auto_nag(rtol=None) if tx is None else tx
  return loops.steps_to_target(
    tx, q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star), 1e-6, 50_000, with_value=with_value
  )


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


@pytest.mark.parametrize("start", [10.0, 1e3])
def test_auto_nag_does_not_blow_up_where_the_curvature_vanishes(x64, start):
  # Pseudo-Huber: convex and 1-smooth, but nearly flat far from the minimum, so the decayed
  # curvature estimate lets the step grow there; the uphill rule must stop the overshoots from
  # growing once the iterate reaches the curved region.
  target = jnp.array([1.0, -2.0, 3.0])
  f = lambda x: jnp.sum(jnp.sqrt(1.0 + (x - target) ** 2))
  sol = nag_optax.minimize(f, jnp.full(3, start), nag_optax.auto_nag(rtol=1e-8), max_steps=5_000)
  chex.assert_tree_all_finite(sol.params)
  assert sol.stop_reason == nag_optax.StopReason.RTOL
  np.testing.assert_allclose(np.asarray(sol.params), np.asarray(target), atol=1e-6)


@pytest.mark.parametrize("spacing,bound", [("log", 2.3), ("linear", 0.9)])
@pytest.mark.parametrize("with_value", [True, False])
def test_curvature_chain_accelerates_on_ill_conditioned_quadratic(x64, with_value, spacing, bound):
  q = quadratics.make_quadratic(100, 1e4, spacing=spacing, seed=5)
  n_lb = q.lower_bound_iterations(1e-6)
  k, _, state = _auto_nag_steps(q, with_value=with_value)
  # Measured 2.21 (log) and 0.79 (linear) x N_LB; FISTA with restart throughout (the schedule
  # before "adaptive") 2.31 and 1.01; plain gradient descent about kappa ln(1/eps) / 2 ~ 69,000.
  assert k <= bound * n_lb
  assert float(optax.tree.get(state, "learning_rate")) >= 1.0 / q.lipschitz


@pytest.mark.parametrize("factor", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_auto_nag_is_robust_to_the_initial_step(x64, factor):
  q = quadratics.make_quadratic(100, 1e4, seed=5)
  # The Nesterov method (auto_nag's float32 method and its float64 phase after the switch);
  # the spectral method's robustness is in test_spectral.py.
  reference, _, _ = _auto_nag_steps(
    q, nag_optax.auto_nag(method="nesterov", rtol=None), with_value=True
  )
  tx = nag_optax.auto_nag(method="nesterov", initial_step=factor / q.lipschitz, rtol=None)
  k, x, state = _auto_nag_steps(q, tx, with_value=True)
  chex.assert_tree_all_finite(x)
  assert k <= reference + 50  # a small additive loss at most
  # A huge guess costs function evaluations once (halvings of the first step), never iterations.
  evals = int(optax.tree.get(state, "function_evals"))
  assert evals <= 2 + max(0.0, math.log2(factor)) + 2


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


@pytest.mark.parametrize("dim", [2, 100])
def test_auto_nag_solves_rosenbrock(x64, dim):
  def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

  x0 = jnp.zeros(dim).at[0].set(-1.2) if dim == 2 else jnp.zeros(dim)
  sol = nag_optax.minimize(rosenbrock, x0, nag_optax.auto_nag(rtol=1e-8), max_steps=50_000)
  assert sol.stop_reason == nag_optax.StopReason.RTOL
  np.testing.assert_allclose(np.asarray(sol.params), np.ones(dim), atol=1e-4)


def test_auto_nag_needs_no_arguments_and_stops_by_itself(x64):
  q = quadratics.make_quadratic(50, 1e3, seed=9)
  sol = nag_optax.minimize(q.value, jnp.asarray(q.x0))
  assert sol.stop_reason == nag_optax.StopReason.RTOL
  assert float(sol.grad_norm) <= 1e-6 * float(jnp.linalg.norm(q.grad(jnp.asarray(q.x0))))
  assert int(sol.steps) < 3 * q.lower_bound_iterations(1e-6)


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
    (nag_optax.auto_nag, dict(schedule="fast"), "schedule"),
    (nag_optax.auto_nag, dict(rtol=-1.0), "rtol"),
  ],
)
def test_bad_configuration_raises(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)


@pytest.mark.parametrize("spacing,kappa,bound", [("log", 1e4, 1.8), ("linear", 1e4, 0.9)])
def test_auto_nag_on_the_quadratic_suites_problems(x64, spacing, kappa, bound):
  # The quadratic benchmark's own problems (n = 300, seed 0), the Nesterov method: measured 1.73
  # and 0.83 x N_LB (FISTA with restart, its previous schedule: 2.18 and 1.06).
  q = quadratics.make_quadratic(300, kappa, spacing=spacing, seed=0)
  k, _, state = _auto_nag_steps(q, nag_optax.auto_nag(method="nesterov", rtol=None))
  assert k <= bound * q.lower_bound_iterations(1e-6), k
  estimate = float(optax.tree.get(state, "condition_number"))
  assert kappa <= estimate <= 100 * kappa  # the restarts measured kappa, with room to spare


def test_auto_nag_adaptive_schedule_in_float32():
  q = quadratics.make_quadratic(100, 1e4, seed=5)
  x0 = jnp.asarray(q.x0, jnp.float32)
  sol = nag_optax.minimize(
    lambda x: q.value(x), x0, nag_optax.auto_nag(rtol=1e-5), max_steps=20_000
  )
  chex.assert_tree_all_finite(sol.params)
  assert sol.params.dtype == jnp.float32
  assert sol.stop_reason == nag_optax.StopReason.RTOL
  estimate = optax.tree.get(sol.state, "condition_number")
  # By rtol 1e-5 (576 steps) the first FISTA run has ended in a restart and set the estimate.
  assert estimate.dtype == jnp.float32 and 1e3 <= float(estimate) <= 1e6
