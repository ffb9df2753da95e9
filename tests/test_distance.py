"""scale_by_distance: the distance estimate (Prodigy's D) against a NumPy reference loop, its
weighted moments, its bound by the distance to the minimiser, and the plateau factor."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from tests import x64


def _distance_reference(
  x0,
  grad_fn,
  steps,
  *,
  d0,
  decay,
  sigma,
  rho,
  rms_decay,
  max_rms_decay,
  eps,
  mu,
  adam=None,
  weighted=False,
  stride=1,
):
  """NumPy loop of the documented rule (default or Adam direction; with ``weighted``, Adam's
  moments are averages weighted by ``w_k = d_k / d_0``, normalised by the weights' EMAs instead
  of bias correction), then Nesterov momentum. The estimate's sums (and the default direction's
  mean square) read every ``stride``-th coordinate of the vector (a prime, as the block takes
  for a large leaf), scaled by its size over the sample's."""
  idx = np.arange(0, x0.size, stride)
  scale = x0.size / idx.size
  x, x_init = x0.copy(), x0.copy()
  d, r, s, v, vmax, m = d0, 0.0, np.zeros_like(x0), 0.0, 0.0, np.zeros_like(x0)
  am, av = np.zeros_like(x0), np.zeros_like(x0)
  w1 = w2 = 0.0  # EMAs of w and w^2 (weighted)
  xs, ds = [], []
  for k in range(steps):
    g = grad_fn(x)
    if k == 0:
      d = d_init = min(d, rho * max(np.sqrt(np.mean(x**2)), 1e-3))
    if adam is None:
      v = rms_decay * v + (1 - rms_decay) * scale * np.sum(g[idx] ** 2) / g.size
      vmax = max(v / (1 - rms_decay ** (k + 1)), max_rms_decay * vmax)
      a = g / (np.sqrt(vmax) + eps)
    else:
      b1, b2 = adam
      w = d / d_init if weighted else 1.0  # Prodigy's moments are sums of d_k g_k
      gw = w * g
      am, av = b1 * am + (1 - b1) * gw, b2 * av + (1 - b2) * gw**2
      m_hat = b1 * am / (1 - b1 ** (k + 2)) + (1 - b1) * gw / (1 - b1 ** (k + 1))  # nesterov
      a = m_hat / (np.sqrt(av / (1 - b2 ** (k + 1))) + eps)
      if weighted:  # bias correction -> the normalisation of the weighted averages
        w1, w2 = b1 * w1 + (1 - b1) * w, b2 * w2 + (1 - b2) * w * w
        a = a * (1 - b1 ** (k + 1)) / w1 * np.sqrt(w2 / (1 - b2 ** (k + 1)))
    u = -sigma * d * a
    lam = d * d
    r = decay * r + lam * scale * float(g[idx] @ (x_init[idx] - x[idx]))
    s = decay * s + lam * g
    den = scale * np.sum(np.abs(s[idx]))
    d = max(d, r / den if den > 0 else 0.0)
    if mu is None:
      x = x + u
    else:  # PyTorch / optax Nesterov: m = mu m + u; step = u + mu m
      m = mu * m + u
      x = x + u + mu * m
    xs.append(x.copy())
    ds.append(d)
  return np.array(xs), np.array(ds)


@pytest.mark.parametrize("subsample,stride", [(1, 1), (4, 5)])
@pytest.mark.parametrize("direction", ["default", "adam", "weighted_adam"])
def test_scale_by_distance_matches_the_reference_loop(direction, subsample, stride):
  # A separable quadratic on a leaf large enough to be sampled (70,000 coordinates): subsample 1
  # is the full estimate, subsample 4 sums over coordinates 0, 5, 10, ... scaled by 5.
  with x64.enable_x64(True):
    rng = np.random.RandomState(0)
    n = 70_000
    scales = np.logspace(0, 2, n)[rng.permutation(n)]
    x_star = rng.randn(n)
    grad_np = lambda x: scales * (x - x_star)
    x0 = rng.randn(n) * 0.1
    adam = (0.9, 0.999) if direction.endswith("adam") else None
    weighted = direction.startswith("weighted")
    # A normaliser that may fall by 10% per step exercises the running maximum within 200 steps.
    max_rms_decay = 0.9
    kwargs = dict(
      d0=1e-4,
      decay=0.9995,
      sigma=0.1,
      rho=0.1,
      rms_decay=0.999,
      max_rms_decay=max_rms_decay,
      eps=1e-8,
      mu=0.9,
    )
    ref_x, ref_d = _distance_reference(
      x0, grad_np, 200, adam=adam, weighted=weighted, stride=stride, **kwargs
    )
    block = nag_optax.scale_by_distance(
      subsample=subsample,
      initial_learning_rate=1e-4,
      step_scale=0.1,
      max_rms_decay=max_rms_decay,
      direction=optax.scale_by_adam(0.9, 0.999, 1e-8, nesterov=True) if adam else None,
      weighted_direction=(0.9, 0.999) if weighted else None,
    )
    tx = optax.chain(block, nag_optax.nesterov(0.9))
    scales_jnp, x_star_jnp = jnp.asarray(scales), jnp.asarray(x_star)

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(scales_jnp * (x - x_star_jnp), state, x)
      x = optax.apply_updates(x, updates)
      return (x, state), (x, state[0].distance)

    x = jnp.asarray(x0)
    _, (xs, ds) = jax.jit(lambda c: jax.lax.scan(step, c, None, length=200))((x, tx.init(x)))
    np.testing.assert_allclose(np.array(ds), ref_d, rtol=1e-9)
    # Over 70,000 coordinates the sums add in another order than NumPy's, and once coordinates
    # converge Adam's direction flips with the sign of a near-zero gradient: the iterates agree
    # as vectors, to rounding over the first 50 steps and to 1e-3 after.
    error = np.linalg.norm(np.array(xs) - ref_x, axis=1) / np.linalg.norm(ref_x, axis=1)
    assert error[:50].max() < 1e-9 and error.max() < 1e-3, (error[:50].max(), error.max())
    assert ref_d[-1] > 100 * ref_d[0]  # the estimate grew: the test covers the growth branch


def test_weighted_direction_is_adam_while_the_estimate_is_constant():
  # w_k = d_k / d_0 = 1 while d never grows (a d_0 above the distance to the minimiser), so the
  # weighted moments and their normalisation (c_k = 1) leave Adam's direction as it is.
  x0 = jnp.array([0.3, -0.2, 0.1])
  grad = lambda x: jnp.array([1.0, 10.0, 100.0]) * (x - 0.05)
  runs = []
  for weighted in (None, (0.9, 0.999)):
    tx = nag_optax.scale_by_distance(
      initial_learning_rate=1.0,  # above ||x_0 - x_*||_inf = 0.25, which bounds the estimate
      step_scale=0.01,
      max_relative_step=math.inf,
      direction=optax.scale_by_adam(0.9, 0.999, nesterov=True),
      weighted_direction=weighted,
    )
    x, state = x0, tx.init(x0)
    for _ in range(50):
      updates, state = tx.update(grad(x), state, x)
      x = optax.apply_updates(x, updates)
    assert float(state.distance) == 1.0  # the estimate stayed below d_0
    runs.append(x)
  plain = x0
  tx = optax.nadamw(0.01, weight_decay=0.0)
  state = tx.init(plain)
  for _ in range(50):
    updates, state = tx.update(grad(plain), state, plain)
    plain = optax.apply_updates(plain, updates)
  np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6)
  np.testing.assert_allclose(runs[1], plain, rtol=1e-6)


def test_weighted_direction_keeps_float16_moments_finite():
  # d grows from 1e-3 by orders of magnitude: the weight d_k / d_0 times the gradient would
  # square past float16's range in Adam's second moment; it is bounded by max ** 0.25 = 16.
  x = jnp.full((8,), 0.5, jnp.float16)
  tx = nag_optax.scale_by_distance(
    initial_learning_rate=1e-3, direction=optax.scale_by_adam(), weighted_direction=(0.9, 0.999)
  )
  state = tx.init(x)
  for _ in range(300):
    updates, state = tx.update(x - 5.0, state, x)
    x = optax.apply_updates(x, updates)
  assert float(state.distance) > 100 * float(state.initial_distance)  # the weight hit its bound
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state))
  assert float(jnp.max(jnp.abs(x - 5.0))) < 0.5, x


def test_distance_estimate_never_exceeds_the_distance_to_the_minimiser():
  # For a convex loss r_k <= ||s_k||_1 ||x_0 - x*||_inf (Hoelder), so d_k <= ||x_0 - x*||_inf.
  with x64.enable_x64(True):
    rng = np.random.RandomState(1)
    scales = np.logspace(0, 3, 20)
    x_star = rng.randn(20)
    grad = lambda x: scales * (x - x_star)
    tx = nag_optax.scale_by_distance(initial_learning_rate=1e-6)
    x = jnp.zeros(20)
    state = tx.init(x)
    for _ in range(2000):
      updates, state = tx.update(grad(x), state, x)
      x = optax.apply_updates(x, updates)
    bound = float(np.max(np.abs(x_star)))
    assert 0.1 * bound < float(state.distance) <= bound * (1 + 1e-9)


def test_a_too_large_initial_rate_is_capped_at_the_first_step():
  params = {"w": jnp.full((4, 4), 0.5), "b": jnp.zeros(4)}
  rms = float(jnp.sqrt(jnp.sum(params["w"] ** 2) / 20))
  grads = jax.tree.map(jnp.ones_like, params)
  tx = nag_optax.scale_by_distance(initial_learning_rate=1.0)
  updates, state = tx.update(grads, tx.init(params), params)
  step_rms = float(optax.tree.norm(updates)) / np.sqrt(20)  # the default direction has rms 1
  np.testing.assert_allclose(step_rms, 0.1 * rms, rtol=1e-5)
  tx = nag_optax.auto_nadamw(initial_learning_rate=1.0)
  _, state = tx.update(grads, tx.init(params), params)
  distance = float(optax.tree.get(state, "distance"))
  np.testing.assert_allclose(distance, 0.1 * rms, rtol=1e-5)


def test_plateau_factor_scales_the_step_not_the_estimate():
  tx = nag_optax.scale_by_distance(
    initial_learning_rate=0.5,
    max_relative_step=math.inf,
    plateau=optax.contrib.reduce_on_plateau(factor=0.5, patience=1, min_scale=0.25),
  )
  params = jnp.ones(2)
  state = tx.init(params)
  for value in [1.0, 2.0, 2.0, 2.0, 2.0]:  # no new best after the first: halved to the floor
    updates, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(value))
  assert float(state.plateau_scale) == 0.25
  assert float(state.distance) == 0.5  # params never moved: no estimate growth, no decay
  np.testing.assert_allclose(float(state.learning_rate), 0.125)
  np.testing.assert_allclose(np.asarray(updates), -0.125 * np.ones(2), rtol=1e-5)


def test_scale_by_distance_rejects_bad_configuration():
  with pytest.raises(ValueError, match="initial_learning_rate"):
    nag_optax.scale_by_distance(initial_learning_rate=0.0)
  with pytest.raises(ValueError, match="learning_rate"):
    nag_optax.scale_by_distance(learning_rate=-1.0)
  with pytest.raises(ValueError, match="decay"):
    nag_optax.scale_by_distance(decay=1.5)
  with pytest.raises(TypeError, match="direction"):
    nag_optax.scale_by_distance(direction="adam")
  with pytest.raises(ValueError, match="weighted_direction"):
    nag_optax.scale_by_distance(weighted_direction=(0.9, 0.999))  # no direction to weight
  with pytest.raises(ValueError, match="weighted_direction"):
    nag_optax.scale_by_distance(direction=optax.scale_by_adam(), weighted_direction=(0.9,))
  with pytest.raises(ValueError, match=r"weighted_direction\[1\]"):
    nag_optax.scale_by_distance(direction=optax.scale_by_adam(), weighted_direction=(0.9, 1.0))
