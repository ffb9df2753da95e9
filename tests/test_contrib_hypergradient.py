"""contrib.scale_by_hypergradient: the rule against a reference loop, its safeguards, plateau decay
and the learning-rate-floor stop on scripted losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import contrib


def _reference(x0, grad_fn, steps, *, lr0, beta, growth, rho, bounds, mu):
  """NumPy loop of the documented rule followed by PyTorch-style Nesterov momentum."""
  lower, upper = bounds
  x, prev_x, eta, m, warming = x0.copy(), None, lr0, np.zeros_like(x0), True
  xs, etas, branches = [], [], set()
  for k in range(steps):
    g = grad_fn(x)
    c = 0.0
    if k > 0:
      d = x - prev_x
      denom = np.linalg.norm(g) * np.linalg.norm(d)
      c = -float(g @ d) / denom if denom > 0 else 0.0
    new_eta = eta * (1 + beta * c)
    warming = warming and (c > 0 or k < 1)
    if warming and c > 0:
      new_eta, _ = eta * growth, branches.add("warmup")
    elif k > 0:
      branches.add("hypergradient")
    new_eta = min(max(new_eta, lower), upper)
    cap = rho * max(np.linalg.norm(x), 1e-3) / np.linalg.norm(g)
    if cap < new_eta:
      branches.add("cap during warm-up" if (warming or k < 1) else "cap after warm-up")
    emitted = min(new_eta, cap)  # the cap limits the step; stored in full at k = 0 / warm-up,
    new_eta = max(emitted if (warming or k < 1) else max(emitted, 0.5 * new_eta), lower)
    u = -emitted * g
    m = mu * m + u
    prev_x, x, eta = x, x + u + mu * m, new_eta
    xs.append(x.copy())
    etas.append(new_eta)  # the stored (adapted) rate
  return np.array(xs), np.array(etas), branches


def _reference_chain(lr0, beta, growth, rho, bounds, mu, per_leaf=False):
  """The transformation the reference loops write out, from their keyword arguments."""
  return optax.chain(
    contrib.scale_by_hypergradient(
      lr0,
      hypergradient_rate=beta,
      warmup_growth=growth,
      max_relative_step=rho,
      learning_rate_bounds=bounds,
      per_leaf=per_leaf,
    ),
    nag_optax.nesterov(mu),
  )


@pytest.mark.usefixtures("x64")
def test_matches_reference_loop():
  diag = np.array([1.0, 4.0, 30.0, 200.0])
  grad_fn = lambda x: diag * (x - 1.0) + 0.3 * np.sin(x)
  x0 = np.array([3.0, -2.0, 0.5, 2.0])
  kwargs = dict(lr0=1e-2, beta=0.2, growth=3.0, rho=0.1, bounds=(1e-6, 0.02), mu=0.9)
  want_x, want_eta, branches = _reference(x0, grad_fn, 40, **kwargs)
  # Every rule is exercised.
  assert branches == {"warmup", "hypergradient", "cap during warm-up", "cap after warm-up"}, (
    branches
  )

  tx = _reference_chain(**kwargs)
  x = jnp.asarray(x0)
  state = tx.init(x)
  step = jax.jit(lambda x, s: tx.update(diag * (x - 1.0) + 0.3 * jnp.sin(x), s, x))
  for k in range(40):
    updates, state = step(x, state)
    x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(x, want_x[k], rtol=1e-10, atol=1e-12, err_msg=f"step {k}")
    np.testing.assert_allclose(
      optax.tree.get(state, "learning_rate"), want_eta[k], rtol=1e-10, err_msg=f"step {k}"
    )


def _reference_per_leaf(x0, grad_fn, groups, steps, *, lr0, beta, growth, rho, bounds, mu):
  """The per-leaf rule: one rate and one warm-up per group of coordinates, a global cap."""
  lower, upper = bounds
  x, prev_x, m = x0.copy(), None, np.zeros_like(x0)
  etas, warming = np.full(len(groups), lr0), np.ones(len(groups), bool)
  xs, effective = [], []
  for k in range(steps):
    g = grad_fn(x)
    new = etas.copy()
    for i, idx in enumerate(groups):
      c = 0.0
      if k > 0:
        d = (x - prev_x)[idx]
        denom = np.linalg.norm(g[idx]) * np.linalg.norm(d)
        c = -float(g[idx] @ d) / denom if denom > 0 else 0.0
      warming[i] = warming[i] and (c > 0 or k < 1)
      new[i] = etas[i] * growth if (warming[i] and c > 0) else etas[i] * (1 + beta * c)
    new = np.clip(new, lower, upper)
    u = np.zeros_like(x)
    for i, idx in enumerate(groups):
      u[idx] = -new[i] * g[idx]
    cap = rho * max(np.linalg.norm(x), 1e-3)
    if np.linalg.norm(u) > cap:
      emitted = new * cap / np.linalg.norm(u)
      for i, idx in enumerate(groups):
        u[idx] = -emitted[i] * g[idx]
        keep = emitted[i] if (warming[i] or k < 1) else max(emitted[i], 0.5 * new[i])
        new[i] = max(keep, lower)
    etas = new
    m = mu * m + u
    prev_x, x = x, x + u + mu * m
    xs.append(x.copy())
    stored_u = np.concatenate([etas[i] * g[idx] for i, idx in enumerate(groups)])
    effective.append(np.linalg.norm(stored_u) / np.linalg.norm(g))
  return np.array(xs), np.array(effective)


@pytest.mark.usefixtures("x64")
def test_per_leaf_matches_reference_loop():
  diag = np.array([1.0, 4.0, 30.0, 200.0, 0.5])
  grad_fn = lambda x: diag * (x - 1.0) + 0.3 * np.sin(x)
  x0 = np.array([3.0, -2.0, 0.5, 2.0, -1.0])
  groups = [np.array([0, 1]), np.array([2, 3, 4])]
  kwargs = dict(lr0=1e-4, beta=0.2, growth=3.0, rho=0.1, bounds=(1e-6, 0.02), mu=0.9)
  want_x, want_eff = _reference_per_leaf(x0, grad_fn, groups, 40, **kwargs)

  tx = _reference_chain(**kwargs, per_leaf=True)
  d = {"a": jnp.asarray(diag[:2]), "b": jnp.asarray(diag[2:])}
  grad = lambda p: jax.tree.map(lambda di, x: di * (x - 1.0) + 0.3 * jnp.sin(x), d, p)
  params = {"a": jnp.asarray(x0[:2]), "b": jnp.asarray(x0[2:])}
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(grad(p), s, p))
  for k in range(40):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    got = np.concatenate([params["a"], params["b"]])
    np.testing.assert_allclose(got, want_x[k], rtol=1e-10, atol=1e-12, err_msg=f"step {k}")
    np.testing.assert_allclose(optax.tree.get(state, "learning_rate"), want_eff[k], rtol=1e-8)
  rates = state[0].leaf_learning_rates
  assert float(rates["a"]) != float(rates["b"])  # the leaves did adapt separately


def test_rate_stays_in_bounds_under_adversarial_gradients():
  bounds = (1e-3, 1.0)
  tx = contrib.scale_by_hypergradient(
    0.5,
    hypergradient_rate=0.9,
    warmup_growth=10.0,
    max_relative_step=None,
    learning_rate_bounds=bounds,
  )
  params = jnp.ones(3)
  state = tx.init(params)
  g = jnp.array([1.0, -2.0, 0.5])
  grads = [
    g,
    -g,
    g * 1e30,
    -g * 1e30,
    g * 1e-30,
    jnp.zeros(3),
    g.at[0].set(jnp.nan),
    g.at[1].set(jnp.inf),
    -g,
    g,
    jnp.full(3, jnp.nan),
    g * 3e38,
    -g * 3e38,
  ] * 3
  for k, grad in enumerate(grads):
    before = float(state.learning_rate)
    updates, state = tx.update(grad, state, params)
    lr = float(state.learning_rate)
    assert np.isfinite(lr) and bounds[0] <= lr <= bounds[1], (k, lr)
    assert np.isfinite(float(state.hypergradient))
    if not np.all(np.isfinite(np.asarray(grad))):
      assert lr == before, k  # a non-finite gradient never moves the rate
    else:
      chex.assert_tree_all_finite(updates)
      params = optax.apply_updates(params, updates)
      params = jnp.where(jnp.isfinite(params), params, 1.0)


def test_relative_step_cap_tames_a_huge_initial_rate():
  tx = contrib.scale_by_hypergradient(10.0, max_relative_step=0.05)
  params = {"w": jnp.full((10,), 2.0)}
  state = tx.init(params)
  grads = {"w": jnp.full((10,), 100.0)}
  updates, state = tx.update(grads, state, params)
  ratio = optax.tree.norm(updates) / optax.tree.norm(params)
  np.testing.assert_allclose(ratio, 0.05, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e15, 1e30, 3e38])
def test_cap_holds_for_huge_gradients_and_beats_the_lower_bound(scale):
  # ||g|| overflows float32 for the larger scales; the cap is computed on g / max|g|.
  tx = contrib.scale_by_hypergradient(1.0, max_relative_step=0.1, learning_rate_bounds=(1e-3, 10.0))
  params = jnp.ones(4, jnp.float32)
  state = tx.init(params)
  updates, state = tx.update(jnp.full(4, scale, jnp.float32), state, params)
  chex.assert_tree_all_finite(updates)
  ratio = float(jnp.linalg.norm(updates / 1e3)) * 1e3 / float(jnp.linalg.norm(params))
  assert ratio <= 0.1 * (1 + 1e-5), ratio


def _hypergradient_sgd(
  learning_rate=1e-3,
  *,
  hypergradient_rate=0.1,
  warmup_growth=2.0,
  max_relative_step=0.1,
  plateau=None,
  min_learning_rate=None,
):
  """The hypergradient Nesterov SGD that auto_nag_sgd was up to 0.1 (per-leaf rates)."""
  inner = optax.chain(
    contrib.scale_by_hypergradient(
      learning_rate,
      hypergradient_rate=hypergradient_rate,
      warmup_growth=warmup_growth,
      max_relative_step=max_relative_step,
      plateau=plateau,
      per_leaf=True,
    ),
    nag_optax.nesterov(0.9),
  )
  return nag_optax.stop_when(inner, min_learning_rate=min_learning_rate)


def test_one_outlier_gradient_does_not_collapse_the_rate():
  tx = _hypergradient_sgd(1e-2, min_learning_rate=1e-4)
  params = jnp.full(8, 3.0)
  state = tx.init(params)
  for k in range(40):
    grad = 2 * params * (1e5 if k == 30 else 1.0)
    updates, state = tx.update(grad, state, params)
    params = optax.apply_updates(params, updates)
  assert not bool(nag_optax.should_stop(state))
  rates = state.inner_state[0].leaf_learning_rates
  assert float(rates) > 1e-3, float(rates)  # halved once by the outlier's cap, not 1e-6


def test_a_nan_loss_never_reaches_the_plateau():
  tx = _fixed_rate(optax.contrib.reduce_on_plateau(factor=0.5, patience=1))
  params = jnp.ones(2)
  state = tx.init(params)
  _, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(1.0))
  before = state.plateau
  _, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(jnp.nan))
  chex.assert_trees_all_equal(state.plateau, before)
  assert float(state.plateau_scale) == 1.0


def test_init_state_does_not_alias_the_params():
  # A state sharing buffers with the params cannot be donated together with them.
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  state = nag_optax.auto_nag_sgd().init(params)
  ids = {id(leaf) for leaf in jax.tree.leaves(params)}
  assert not any(id(leaf) in ids for leaf in jax.tree.leaves(state))


def test_warmup_ends_at_the_first_overshoot():
  tx = contrib.scale_by_hypergradient(1e-3, warmup_growth=2.0, max_relative_step=None)
  params = jnp.array([1.0, 1.0])
  state = tx.init(params)
  g = jnp.array([1.0, 1.0])
  rates = []
  for grad in [g, g, g, g, -g, -g]:  # the 5th gradient points back along the last step
    updates, state = tx.update(grad, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(float(state.learning_rate))
  np.testing.assert_allclose(rates[:4], [1e-3, 2e-3, 4e-3, 8e-3], rtol=1e-6)
  assert not bool(state.warming_up)
  np.testing.assert_allclose(rates[4], 8e-3 * (1 - 0.1), rtol=1e-6)  # c = -1, beta = 0.1
  # The 6th points along the (reversed) last step, c = +1: growth by 1 + beta, no doubling.
  np.testing.assert_allclose(rates[5], rates[4] * 1.1, rtol=1e-6)


def test_needs_params():
  tx = contrib.scale_by_hypergradient()
  state = tx.init(jnp.ones(2))
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), state)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(hypergradient_rate=1.0), "hypergradient_rate"),
    (dict(hypergradient_rate=-0.1), "hypergradient_rate"),
    (dict(warmup_growth=0.5), "warmup_growth"),
    (dict(max_relative_step=0.0), "max_relative_step"),
    (dict(learning_rate_bounds=(1.0, 0.5)), "learning_rate_bounds"),
    (dict(learning_rate_bounds=(0.0, 1.0)), "learning_rate_bounds"),
    (dict(learning_rate_bounds=1.0), "learning_rate_bounds"),
    (dict(plateau=0.5), "plateau"),
  ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
  with pytest.raises((ValueError, TypeError), match=name):
    contrib.scale_by_hypergradient(**kwargs)


# Scripted losses: improvements for three calls, then a flat loss. With patience 2 and one value
# per window, reduce_on_plateau halves at the 2nd and 4th flat call after the last new best.
VALUES = [10.0, 9.0, 8.0] + [8.0] * 9

EXPECTED_RATES = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625]


def _fixed_rate(plateau, **kwargs):
  return contrib.scale_by_hypergradient(
    1.0,
    hypergradient_rate=0.0,
    warmup_growth=None,
    max_relative_step=None,
    plateau=plateau,
    **kwargs,
  )


def test_plateau_decay_fires_at_the_right_step():
  tx = _fixed_rate(optax.contrib.reduce_on_plateau(factor=0.5, patience=2))
  params = jnp.ones(2)
  state = tx.init(params)
  rates = []
  for value in VALUES:
    updates, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(value))
    np.testing.assert_allclose(updates, -state.learning_rate * jnp.ones(2))
    rates.append(float(state.learning_rate))
  np.testing.assert_allclose(rates, EXPECTED_RATES)
  np.testing.assert_allclose(state.plateau_scale, EXPECTED_RATES[-1])


def test_plateau_decay_lowers_the_ceiling():
  # Gradients that keep pointing along the last step push the rate up by (1 + beta) a step;
  # each decay also multiplies the upper bound, which the rate never exceeds.
  tx = contrib.scale_by_hypergradient(
    0.01,
    hypergradient_rate=0.5,
    warmup_growth=None,
    max_relative_step=None,
    learning_rate_bounds=(1e-8, 0.02),
    plateau=optax.contrib.reduce_on_plateau(factor=0.5, patience=1),
  )
  params = jnp.ones(2)
  state = tx.init(params)
  for value in [1.0] + [1.0] * 6:
    updates, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(value))
    params = optax.apply_updates(params, updates)
    assert float(state.learning_rate) <= 0.02 * float(state.plateau_scale) + 1e-12
  assert float(state.plateau_scale) == 0.5**6


def test_without_value_the_plateau_is_not_fed():
  tx = _fixed_rate(optax.contrib.reduce_on_plateau(factor=0.5, patience=1))
  params = jnp.ones(2)
  state = tx.init(params)
  for _ in range(10):
    _, state = tx.update(jnp.ones(2), state, params)
  assert float(state.learning_rate) == 1.0


def test_learning_rate_floor_stop_fires_at_the_right_step():
  tx = _hypergradient_sgd(
    1.0,
    hypergradient_rate=0.0,
    warmup_growth=None,
    max_relative_step=None,
    plateau=optax.contrib.reduce_on_plateau(factor=0.5, patience=2),
    min_learning_rate=0.2,
  )
  params = jnp.ones(2)
  state = tx.init(params)
  applied = []
  for value in VALUES:
    updates, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(value))
    applied.append(bool(jnp.any(updates != 0)))
  # The rate falls to 0.125 < 0.2 at call 8; the signal tests the rate before each step, so
  # call 9 is the first one not applied.
  first_off = EXPECTED_RATES.index(0.125) + 1
  assert applied == [True] * first_off + [False] * (len(VALUES) - first_off)
  assert nag_optax.stop_reason(state) == nag_optax.StopReason.MIN_LEARNING_RATE
  assert bool(nag_optax.should_stop(state))
