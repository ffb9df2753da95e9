"""nesterov(): closed forms on quadratics, schedules, restart, configuration."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from problems import quadratics
from tests import loops


def _sgd_nesterov(step, **kwargs):
  return optax.chain(optax.scale(-step), nag_optax.nesterov(**kwargs))


@pytest.mark.parametrize("spacing", ["log", "linear"])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_constant_momentum_matches_closed_form(x64, spacing, momentum):
  q = quadratics.make_quadratic(16, 100.0, spacing=spacing, rotate=False, seed=1)
  step = 1.0 / q.lipschitz
  num_steps = 300
  expected = quadratics.nesterov_closed_form(q, step, momentum, num_steps)
  xs, _ = loops.iterates(
    _sgd_nesterov(step, momentum=momentum), q.value, jnp.asarray(q.x0), num_steps
  )
  np.testing.assert_allclose(np.asarray(xs), expected, rtol=0, atol=1e-12)


def test_closed_form_catches_off_by_one_in_momentum(x64):
  """The precision test must distinguish the Sutskever form from its neighbours."""
  q = quadratics.make_quadratic(16, 100.0, rotate=False, seed=1)
  step = 1.0 / q.lipschitz
  expected = quadratics.nesterov_closed_form(q, step, 0.9, 50)
  # Heavy ball with the same step and momentum differs from Nesterov far above 1e-12.
  xs, _ = loops.iterates(optax.sgd(step, 0.9, nesterov=False), q.value, jnp.asarray(q.x0), 50)
  assert np.max(np.abs(np.asarray(xs) - expected)) > 1e-3


@pytest.mark.parametrize("condition_number,momentum", [(100.0, 0.8), (100.0, None), (1e3, None)])
def test_asymptotic_rate_matches_spectral_radius(x64, condition_number, momentum):
  eig = quadratics.spectrum(30, condition_number, "log")
  rng = np.random.default_rng(0)
  # x* = 0 so the error can decay far below 1 without a rounding floor.
  q = quadratics.Quadratic(
    matrix=np.diag(eig), eigenvalues=eig, x_star=np.zeros(30), x0=rng.standard_normal(30)
  )
  step = 1.0 / q.lipschitz
  b = q.q if momentum is None else momentum
  rho = quadratics.nesterov_spectral_radius(q, step, b)
  n1 = int(math.log(1e-30) / math.log(rho))
  n2 = int(math.log(1e-150) / math.log(rho))
  xs, _ = loops.iterates(_sgd_nesterov(step, momentum=b), q.value, jnp.asarray(q.x0), n2)
  norms = np.linalg.norm(np.asarray(xs), axis=1)
  observed = (norms[n2] / norms[n1]) ** (1.0 / (n2 - n1))
  assert abs(observed - rho) <= 0.02 * rho


@pytest.mark.parametrize("spacing", ["log", "linear"])
@pytest.mark.parametrize("condition_number", [10.0, 1e3])
def test_strongly_convex_schedule_meets_textbook_bound(x64, spacing, condition_number):
  q = quadratics.make_quadratic(40, condition_number, spacing=spacing, seed=2)
  L, mu = q.lipschitz, q.strong_convexity
  tx = _sgd_nesterov(1.0 / L, schedule="strongly_convex", condition_number=L / mu)
  num_steps = 400
  ys, state = loops.iterates(tx, q.value, jnp.asarray(q.x0), num_steps)
  np.testing.assert_allclose(float(state[1].momentum), q.q, rtol=1e-14)
  ys = np.asarray(ys)[:-1]
  xs = ys - (ys - q.x_star) @ q.matrix / L  # x_k = y_k - g(y_k) / L
  gaps = np.array([float(q.value(jnp.asarray(x))) for x in xs])
  r0 = float(q.value(jnp.asarray(q.x0))) + 0.5 * mu * np.sum((q.x0 - q.x_star) ** 2)
  k = np.arange(num_steps)
  bound = r0 * (1.0 - 1.0 / math.sqrt(L / mu)) ** (k + 1)
  above_rounding = bound > 1e-20  # f is computed from x - x*, so it bottoms out near 1e-31
  assert above_rounding.sum() > 50
  assert np.all(gaps[above_rounding] <= bound[above_rounding])


def test_convex_schedule_sequence(x64):
  tx = nag_optax.nesterov(schedule="convex")
  state = tx.init(jnp.zeros(2))
  t, momenta = 1.0, []
  for _ in range(20):
    _, state = tx.update(jnp.ones(2), state)
    momenta.append(float(state.momentum))
  expected = []
  for _ in range(20):
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    expected.append((t - 1) / t_next)
    t = t_next
  np.testing.assert_allclose(momenta, expected, rtol=1e-14, atol=1e-15)
  assert momenta[0] == 0.0


@pytest.mark.parametrize(
  "condition_number,spacing,seed",
  [(1e2, "log", 0), (1e4, "log", 1), (1e3, "linear", 2), (1e6, "log", 3)],
)
def test_convex_schedule_meets_fista_bound_every_step(x64, condition_number, spacing, seed):
  q = quadratics.make_quadratic(50, condition_number, spacing=spacing, seed=seed)
  L = q.lipschitz
  num_steps = 300
  ys, _ = loops.iterates(
    _sgd_nesterov(1.0 / L, schedule="convex"), q.value, jnp.asarray(q.x0), num_steps
  )
  ys = np.asarray(ys)[:-1]
  xs = ys - (ys - q.x_star) @ q.matrix / L  # FISTA's x_k = y_k - g(y_k) / L, k = 1..num_steps
  gaps = np.array([float(q.value(jnp.asarray(x))) for x in xs])
  k = np.arange(1, num_steps + 1)
  bound = 2 * L * np.sum((q.x0 - q.x_star) ** 2) / (k + 1) ** 2
  assert np.all(gaps <= bound)


def test_fista_iterates_match_reference_loop(x64):
  """The lookahead form equals the textbook two-sequence FISTA written in NumPy."""
  q = quadratics.make_quadratic(20, 1e3, seed=4)
  L = q.lipschitz
  ys, _ = loops.iterates(_sgd_nesterov(1.0 / L, schedule="convex"), q.value, jnp.asarray(q.x0), 100)
  x_prev = y = q.x0.copy()
  t = 1.0
  ref = [y.copy()]
  for _ in range(100):
    x = y - q.matrix @ (y - q.x_star) / L
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    y = x + (t - 1) / t_next * (x - x_prev)
    x_prev, t = x, t_next
    ref.append(y.copy())
  np.testing.assert_allclose(np.asarray(ys), np.array(ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("restart,lower_bound_factor", [("gradient", 3), ("speed", 6)])
def test_restart_accelerates_convex_schedule(x64, restart, lower_bound_factor):
  q = quadratics.make_quadratic(100, 1e4, seed=5)
  L = q.lipschitz
  fun, x0, x_star = q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star)
  plain, _, _ = loops.steps_to_target(
    _sgd_nesterov(1 / L, schedule="convex"), fun, x0, x_star, 1e-6, 60_000
  )
  fast, _, state = loops.steps_to_target(
    _sgd_nesterov(1 / L, schedule="convex", restart=restart), fun, x0, x_star, 1e-6, 60_000
  )
  assert fast * 5 <= plain
  restarts = int(state[1].restarts)
  assert restarts >= 2
  # Within a few times the first-order lower bound, as O'Donoghue & Candes report
  # (measured here: gradient 1,854, speed 3,902, N_LB 691, no restart 41,537).
  assert fast <= lower_bound_factor * q.lower_bound_iterations(1e-6)


def test_gradient_restart_fires_exactly_when_step_goes_uphill(x64):
  """Replay the loop in NumPy and check the restart decision and the reset at each step."""
  q = quadratics.make_quadratic(10, 1e3, seed=6)
  L = q.lipschitz
  tx = _sgd_nesterov(1 / L, schedule="convex", restart="gradient")
  x = jnp.asarray(q.x0)
  state = tx.init(x)
  m, b_prev, t, restarts = np.zeros(10), 0.0, 1.0, 0
  y = q.x0.copy()
  for _ in range(200):
    u = -(q.matrix @ (y - q.x_star)) / L
    m_new = b_prev * m + u
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    b = (t - 1) / t_next
    if u @ m_new < 0:
      restarts += 1
      y, m, b_prev, t = y + u, np.zeros(10), 0.0, 1.0
    else:
      y, m, b_prev, t = y + u + b * m_new, m_new, b, t_next
    updates, state = tx.update(q.grad(x), state, x)
    x = x + updates
    np.testing.assert_allclose(np.asarray(x), y, atol=1e-12)
    assert int(state[1].restarts) == restarts
  assert restarts > 0


def test_function_restart_uses_value_and_is_off_without_it(x64):
  q = quadratics.make_quadratic(50, 1e4, seed=7)
  tx = _sgd_nesterov(1 / q.lipschitz, schedule="convex", restart="function")
  fun, x0, x_star = q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star)
  with_value, _, state = loops.steps_to_target(tx, fun, x0, x_star, 1e-6, 60_000, with_value=True)
  assert int(state[1].restarts) > 0
  without, _, state = loops.steps_to_target(tx, fun, x0, x_star, 1e-6, 2_000)
  assert int(state[1].restarts) == 0
  assert with_value < 5 * q.lower_bound_iterations(1e-6)


def test_speed_restart_respects_min_interval():
  tx = nag_optax.nesterov(schedule="convex", restart="speed", min_restart_interval=5)
  state = tx.init(jnp.zeros(3))
  restarted_at = []
  # Shrinking steps ask for a restart every step; it may only fire every 6 steps (5 + the step).
  for k in range(30):
    before = int(state.restarts)
    _, state = tx.update(jnp.full(3, 0.5**k), state)
    if int(state.restarts) > before:
      restarted_at.append(k)
  assert restarted_at
  assert all(b - a >= 6 for a, b in zip(restarted_at, restarted_at[1:]))


def test_restart_resets_t_and_buffer():
  tx = nag_optax.nesterov(schedule="convex", restart="gradient")
  state = tx.init(jnp.zeros(2))
  for _ in range(5):
    _, state = tx.update(jnp.ones(2), state)
  assert float(state.t) > 1.0
  # A small step against the accumulated motion: the new momentum still points the old way.
  updates, state = tx.update(-jnp.ones(2), state)
  assert int(state.restarts) == 1
  assert float(state.t) == 1.0 and float(state.momentum) == 0.0
  chex.assert_trees_all_close(state.trace, jnp.zeros(2))
  chex.assert_trees_all_close(updates, -jnp.ones(2))  # the step drops its momentum


def test_momentum_schedule_is_called_with_count(x64):
  schedule = optax.linear_schedule(0.0, 0.9, 10)
  tx = nag_optax.nesterov(schedule)
  state = tx.init(jnp.zeros(1))
  for k in range(12):
    _, state = tx.update(jnp.ones(1), state)
    np.testing.assert_allclose(float(state.momentum), float(schedule(k)), rtol=1e-6)
  assert int(state.count) == 12


def test_accumulator_dtype():
  tx = nag_optax.nesterov(0.9, accumulator_dtype=jnp.bfloat16)
  params = jnp.ones(4, jnp.float32)
  state = tx.init(params)
  assert state.trace.dtype == jnp.bfloat16
  updates, state = tx.update(jnp.ones(4, jnp.float32), state)
  assert updates.dtype == jnp.float32
  assert state.trace.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(schedule="fista"), "schedule"),
    (dict(restart="always"), "restart"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(momentum=float("nan")), "momentum"),
    (dict(schedule="strongly_convex"), "condition_number"),
    (dict(schedule="strongly_convex", condition_number=0.5), "condition_number"),
    (dict(schedule="convex", condition_number=10.0), "condition_number"),
    (dict(accumulator_dtype=jnp.int32), "accumulator_dtype"),
    (dict(min_restart_interval=-1), "min_restart_interval"),
    (dict(schedule="adaptive"), "restart"),
    (dict(schedule="adaptive", restart="gradient", condition_number=0.5), "condition_number"),
  ],
)
def test_bad_configuration_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    nag_optax.nesterov(**kwargs)


def test_momentum_from_condition_number():
  np.testing.assert_allclose(float(nag_optax.momentum_from_condition_number(100.0)), 9 / 11)


def _adaptive_reference(q, num_steps, min_restart_interval=10, condition_number=0.0):
  """NumPy loop of schedule="adaptive" with step 1/L and gradient restart: the lookahead iterates
  y_0..y_num_steps, the condition-number estimate after each step and the restart count."""
  step = 1.0 / q.lipschitz
  y = np.array(q.x0, dtype=np.float64)
  m = np.zeros_like(y)
  b_prev, t, since, kappa_hat, restarts = 0.0, 1.0, 0, condition_number, 0
  ys, estimates = [y.copy()], []
  for _ in range(num_steps):
    u = -step * (q.matrix @ (y - q.x_star))
    t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
    b = (t - 1.0) / t_next
    run_estimate = (2.0 * (since + 1) / math.pi) ** 2
    if kappa_hat > 0:
      root = math.sqrt(max(kappa_hat, run_estimate, 1.0))
      strong = (root - 1.0) / (root + 1.0)
      b = min(strong, b) if since < 2 else strong  # FISTA's 0 and 0.28 open every run
    m = b_prev * m + u
    restarting = float(u @ m) < 0
    b_used = 0.0 if restarting else b
    y = y + u + b_used * m
    if restarting:
      if since + 1 >= min_restart_interval:
        kappa_hat = max(kappa_hat, run_estimate)
      m, t, since, restarts = np.zeros_like(m), 1.0, 0, restarts + 1
    else:
      t, since = t_next, since + 1
    b_prev = b_used
    ys.append(y.copy())
    estimates.append(kappa_hat)
  return np.array(ys), np.array(estimates), restarts


@pytest.mark.parametrize(
  "min_restart_interval,condition_number", [(10, None), (3, None), (10, 50.0)]
)
def test_adaptive_schedule_matches_reference_loop(x64, min_restart_interval, condition_number):
  q = quadratics.make_quadratic(20, 1e3, seed=4)
  num_steps = 600
  expected, estimates, restarts = _adaptive_reference(
    q, num_steps, min_restart_interval, condition_number or 0.0
  )
  assert restarts >= 3 and estimates[-1] > 0  # the test exercises restarts and the estimate
  tx = _sgd_nesterov(
    1.0 / q.lipschitz,
    schedule="adaptive",
    restart="gradient",
    min_restart_interval=min_restart_interval,
    condition_number=condition_number,
  )
  ys, state = loops.iterates(tx, q.value, jnp.asarray(q.x0), num_steps)
  np.testing.assert_allclose(np.asarray(ys), expected, rtol=0, atol=1e-10)
  assert int(state[1].restarts) == restarts
  np.testing.assert_allclose(float(state[1].condition_number), estimates[-1], rtol=1e-12)


def test_adaptive_schedule_with_an_initial_estimate_uses_it_from_the_third_step(x64):
  tx = nag_optax.nesterov(schedule="adaptive", restart="gradient", condition_number=100.0)
  state = tx.init(jnp.zeros(2))
  momenta = []
  for _ in range(4):
    _, state = tx.update(jnp.ones(2), state)
    momenta.append(float(state.momentum))
  # FISTA's 0 and (sqrt(5) - 1) / (sqrt(5) + 1) open the run, then Nesterov's q(100) = 9/11
  # (the run of 3-4 steps bounds kappa by (2 * 4 / pi)^2 = 6.5 only, below the estimate).
  t2 = (1 + math.sqrt(5)) / 2
  fista2 = (t2 - 1) / (0.5 * (1 + math.sqrt(1 + 4 * t2 * t2)))
  np.testing.assert_allclose(momenta, [0.0, fista2, 9 / 11, 9 / 11], rtol=1e-6)
  assert float(state.condition_number) == 100.0


@pytest.mark.parametrize("condition_number", [1e3, 1e4, 1e5])
def test_adaptive_estimate_on_two_eigenvalues(x64, condition_number):
  """Closed form of the estimate on f = (mu x_1^2 + L x_2^2) / 2 with step 1/L.

  FISTA's first run follows the ODE solution x(t) = x_0 2 J_1(sqrt(mu) t) / (sqrt(mu) t) of
  Su, Boyd & Candes (t = k / sqrt(L)), so the gradient restart fires when the slow coordinate
  first crosses zero, at sqrt(mu) t = j_{1,1} = 3.8317: K_1 = j_{1,1} sqrt(kappa) and the estimate
  (2 K_1 / pi)^2 = (2 j_{1,1} / pi)^2 kappa = 5.95 kappa. With momentum q(kappa_hat) fixed, the
  slow mode turns by theta per step with theta^2 ~ 1/kappa - 1/kappa_hat, so later runs last
  pi / theta steps and estimate 4 / theta^2, whose fixed point is 5 kappa: they never raise the
  maximum above the first run's 5.95 kappa (up to one step of rounding of K).
  """
  eig = np.array([1.0, condition_number])
  q = quadratics.Quadratic(
    matrix=np.diag(eig), eigenvalues=eig, x_star=np.zeros(2), x0=np.array([1.0, 1.0])
  )
  tx = _sgd_nesterov(1.0 / q.lipschitz, schedule="adaptive", restart="gradient")
  num_steps = int(40 * math.sqrt(condition_number))
  _, state = loops.iterates(tx, q.value, jnp.asarray(q.x0), num_steps)
  assert int(state[1].restarts) >= 5
  j11 = 3.8317059702075125
  ratio = float(state[1].condition_number) / condition_number
  assert abs(ratio - (2 * j11 / math.pi) ** 2) <= 0.02 * (2 * j11 / math.pi) ** 2, ratio


@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_adaptive_schedule_beats_fista_with_restart(x64, spacing):
  q = quadratics.make_quadratic(100, 1e4, spacing=spacing, seed=5)
  fun, x0, x_star = q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star)
  steps = {}
  for schedule in ("convex", "adaptive"):
    tx = _sgd_nesterov(1.0 / q.lipschitz, schedule=schedule, restart="gradient")
    steps[schedule], _, _ = loops.steps_to_target(tx, fun, x0, x_star, 1e-6, 50_000)
  assert steps["adaptive"] <= 0.9 * steps["convex"], steps
  assert steps["adaptive"] <= 2.5 * q.lower_bound_iterations(1e-6), steps  # measured 2.36 (log)


def test_condition_number_from_restart_interval():
  np.testing.assert_allclose(
    float(nag_optax.condition_number_from_restart_interval(math.pi * 50.0)), 1e4, rtol=1e-6
  )


@pytest.mark.parametrize("condition_number", [10.0, 1e2, 1e4, 1e6])
def test_best_nesterov_parameters_rate_and_optimality(x64, condition_number):
  # The spectral radius of the 2x2 recurrence over [mu, L] is the closed-form rate, and no pair
  # on a grid around the best one does better (Lessard, Recht & Packard's optimisation).
  eig = np.concatenate([quadratics.spectrum(400, condition_number, "log"), [1.0, condition_number]])
  q = quadratics.Quadratic(
    matrix=np.diag(eig), eigenvalues=eig, x_star=np.zeros(eig.size), x0=np.ones(eig.size)
  )
  step, b, rate = (float(v) for v in quadratics.best_nesterov_parameters(condition_number, 1.0))
  np.testing.assert_allclose(rate, 1.0 - 2.0 / math.sqrt(3.0 * condition_number + 1.0), rtol=1e-12)
  np.testing.assert_allclose(quadratics.nesterov_spectral_radius(q, step, b), rate, rtol=1e-8)
  for step_factor in (0.95, 1.03):
    for gap_factor in (0.9, 1.1):
      other = quadratics.nesterov_spectral_radius(q, step * step_factor, 1 - (1 - b) * gap_factor)
      assert other > rate
  # Better than the textbook pair (1/L, q), whose rate is 1 - 1/sqrt(kappa).
  assert rate < quadratics.nesterov_spectral_radius(q, 1.0 / condition_number, q.q)


def test_best_nesterov_parameters_converge_at_their_rate(x64):
  condition_number = 1e3
  eig = quadratics.spectrum(30, condition_number, "log")
  q = quadratics.Quadratic(
    matrix=np.diag(eig),
    eigenvalues=eig,
    x_star=np.zeros(30),
    x0=np.random.default_rng(0).standard_normal(30),
  )
  step, b, rate = (float(v) for v in quadratics.best_nesterov_parameters(condition_number, 1.0))
  n1 = int(math.log(1e-30) / math.log(rate))
  n2 = int(math.log(1e-150) / math.log(rate))
  xs, _ = loops.iterates(_sgd_nesterov(step, momentum=b), q.value, jnp.asarray(q.x0), n2)
  norms = np.linalg.norm(np.asarray(xs), axis=1)
  observed = (norms[n2] / norms[n1]) ** (1.0 / (n2 - n1))
  assert abs(observed - rate) <= 0.02 * (1.0 - rate)
