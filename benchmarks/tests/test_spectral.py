"""The ABBmin reference row against a NumPy loop written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import spectral
from problems import quadratics


def _numpy_abbmin(grad, x, steps, tau=0.8, memory=3):
  g = grad(x)
  step = spectral.PROBE / np.sqrt(np.mean(g * g))
  shorts, xs = [], [x]
  for _ in range(steps):
    x_next = x - step * g
    g_next = grad(x_next)
    s, y = x_next - x, g_next - g
    x, g = x_next, g_next
    xs.append(x)
    sy = s @ y
    if sy <= 0:
      step = 2 * step
      continue
    long_step, short_step = (s @ s) / sy, sy / (y @ y)
    shorts = ([short_step] + shorts)[:memory]
    if short_step < tau * long_step:
      step, tau = min(shorts), 0.9 * tau
    else:
      step, tau = long_step, 1.1 * tau
  return np.array(xs)


def _optax_iterates(grad, x, steps):
  opt = spectral.abbmin()
  state = opt.init(x)

  def body(carry, _):
    x, state = carry
    updates, state = opt.update(grad(x), state, x)
    x = optax.apply_updates(x, updates)
    return (x, state), x

  _, xs = jax.lax.scan(body, (x, state), None, length=steps)
  return np.concatenate([np.asarray(x)[None], np.asarray(xs)])


def test_abbmin_matches_the_numpy_loop_on_a_quadratic():
  with jax.enable_x64():
    q = quadratics.make_quadratic(20, 1e3, seed=1)
    grad_np = lambda x: q.matrix @ (x - q.x_star)
    expected = _numpy_abbmin(grad_np, q.x0, 60)
    got = _optax_iterates(lambda x: q.grad(x), jnp.asarray(q.x0), 60)
  # The spectral step amplifies rounding differences (it is non-monotone): the first 30
  # iterates agree to 1e-9, the later ones to 1e-6.
  np.testing.assert_allclose(got[:30], expected[:30], rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_abbmin_on_the_quadratic_suite_log_kappa_1e2():
  # the suite's problem (seed 0): 1e-6 in 81 iterations (1.17 x N_LB = 69) when measured
  with jax.enable_x64():
    q = quadratics.make_quadratic(300, 1e2, spacing="log", seed=0)
    xs = _optax_iterates(lambda x: q.grad(x), jnp.asarray(q.x0), 90)
  assert q.distance_ratio(xs[-1]) <= 1e-6
  assert q.distance_ratio(xs[60]) > 1e-6  # not before N_LB: the bound holds


def test_abbmin_doubles_its_step_without_curvature():
  # a linear function: <s, y> = 0 at every step, so the step doubles after the probe
  opt = spectral.abbmin()
  x = jnp.ones(4)
  state = opt.init(x)
  steps = []
  for _ in range(4):
    updates, state = opt.update(jnp.ones(4), state, x)
    x = x + updates
    steps.append(float(state.step))
  np.testing.assert_allclose(np.array(steps[1:]) / np.array(steps[:-1]), 2.0, rtol=1e-6)
