"""scale_by_hypergradient and auto_nag_sgd: the rule against a reference loop, its safeguards,
plateau decay and the learning-rate-floor stop on scripted losses, and minibatch training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import nag_optax
from tests import x64


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
    nag_optax.scale_by_hypergradient(
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
  tx = nag_optax.scale_by_hypergradient(
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
  tx = nag_optax.scale_by_hypergradient(10.0, max_relative_step=0.05)
  params = {"w": jnp.full((10,), 2.0)}
  state = tx.init(params)
  grads = {"w": jnp.full((10,), 100.0)}
  updates, state = tx.update(grads, state, params)
  ratio = optax.tree.norm(updates) / optax.tree.norm(params)
  np.testing.assert_allclose(ratio, 0.05, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e15, 1e30, 3e38])
def test_cap_holds_for_huge_gradients_and_beats_the_lower_bound(scale):
  # ||g|| overflows float32 for the larger scales; the cap is computed on g / max|g|.
  tx = nag_optax.scale_by_hypergradient(
    1.0, max_relative_step=0.1, learning_rate_bounds=(1e-3, 10.0)
  )
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
    nag_optax.scale_by_hypergradient(
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
  tx = nag_optax.scale_by_hypergradient(1e-3, warmup_growth=2.0, max_relative_step=None)
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
  tx = nag_optax.scale_by_hypergradient()
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
    nag_optax.scale_by_hypergradient(**kwargs)


# Scripted losses: improvements for three calls, then a flat loss. With patience 2 and one value
# per window, reduce_on_plateau halves at the 2nd and 4th flat call after the last new best.
VALUES = [10.0, 9.0, 8.0] + [8.0] * 9
EXPECTED_RATES = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625]


def _fixed_rate(plateau, **kwargs):
  return nag_optax.scale_by_hypergradient(
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
  tx = nag_optax.scale_by_hypergradient(
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


def test_auto_nag_sgd_patience_stop():
  tx = nag_optax.auto_nag_sgd(patience=3, plateau=None)
  params = jnp.ones(2)
  state = tx.init(params)
  stops = []
  for value in [5.0, 4.0, 4.5, 4.2, 4.1, 4.0]:
    _, state = tx.update(jnp.ones(2), state, params, value=jnp.asarray(value))
    stops.append(bool(nag_optax.should_stop(state)))
  assert stops == [False, False, False, False, True, True]
  assert nag_optax.stop_reason(state) == nag_optax.StopReason.PATIENCE


def test_auto_nag_sgd_skips_nonfinite_gradients():
  tx = nag_optax.auto_nag_sgd()
  params = jnp.ones(3)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([1.0, jnp.nan, 0.0]), state, params, value=jnp.asarray(1.0))
  chex.assert_trees_all_equal(updates, jnp.zeros(3))
  assert int(state.count) == 0


# Minibatch training on digits: a small Flax NNX MLP, the loop users write.


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def _digits():
  from sklearn.datasets import load_digits

  data = load_digits()
  return jnp.asarray(data.data[:1024] / 16.0, jnp.float32), jnp.asarray(data.target[:1024])


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@pytest.mark.parametrize(
  "make,learning_rate",
  [
    (nag_optax.auto_nag_sgd, 1e-4),
    (nag_optax.auto_nag_sgd, 1e-3),
    (nag_optax.auto_nag_sgd, 10.0),
    (nag_optax.auto_nadamw, 1e-6),
    (nag_optax.auto_nadamw, 1.0),
  ],
)
def test_nnx_training_reaches_a_loss_threshold(make, learning_rate):
  x, y = _digits()
  model = _MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, idx):
    loss, grads = nnx.value_and_grad(_loss)(model, x[idx], y[idx])
    optimizer.update(model, grads, value=loss)

  rng = np.random.RandomState(0)
  for idx in np.concatenate([rng.permutation(1024) for _ in range(10)]).reshape(-1, 64)[:150]:
    step(model, optimizer, jnp.asarray(idx))
  final = float(_loss(model, x, y))
  assert final < 0.15, final


def test_linen_train_state_without_value_reaches_a_loss_threshold():
  x, y = _digits()
  net = _MLP(nnx.Rngs(0))
  graphdef, params = nnx.split(net, nnx.Param)
  apply_fn = lambda p, xb: nnx.merge(graphdef, p)(xb)
  state = train_state.TrainState.create(
    apply_fn=apply_fn, params=params, tx=nag_optax.auto_nag_sgd()
  )

  @jax.jit
  def step(state, idx):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      apply_fn(p, x[idx]), y[idx]
    ).mean()
    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

  rng = np.random.RandomState(0)
  for idx in np.concatenate([rng.permutation(1024) for _ in range(10)]).reshape(-1, 64)[:150]:
    state = step(state, jnp.asarray(idx))
  final = float(
    optax.softmax_cross_entropy_with_integer_labels(apply_fn(state.params, x), y).mean()
  )
  assert final < 0.15, final


# scale_by_distance: the distance estimate (Prodigy's D) and the optimizers built on it.


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
):
  """NumPy loop of the documented rule (default or Adam direction; with ``weighted``, Adam's
  moments are averages weighted by ``w_k = d_k / d_0``, normalised by the weights' EMAs instead
  of bias correction), then Nesterov momentum."""
  x, x_init = x0.copy(), x0.copy()
  d, r, s, v, vmax, m = d0, 0.0, np.zeros_like(x0), 0.0, 0.0, np.zeros_like(x0)
  am, av = np.zeros_like(x0), np.zeros_like(x0)
  w1 = w2 = 0.0  # EMAs of w and w^2 (weighted)
  w_prev = None  # the previous weight (weighted default direction)
  xs, ds = [], []
  for k in range(steps):
    g = grad_fn(x)
    if k == 0:
      d = d_init = min(d, rho * max(np.sqrt(np.mean(x**2)), 1e-3))
    if adam is None and weighted:  # mean square averaged with weights w^2; the max forgets
      w = d / d_init
      w_prev = w if w_prev is None else w_prev
      v = rms_decay * v + (1 - rms_decay) * w * w * np.mean(g**2)
      w2 = rms_decay * w2 + (1 - rms_decay) * w * w
      vmax = max(v / w2, max_rms_decay * (w_prev / w) ** 2 * vmax)
      w_prev = w
      a = g / (np.sqrt(vmax) + eps)
    elif adam is None:
      v = rms_decay * v + (1 - rms_decay) * np.mean(g**2)
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
    r = decay * r + lam * float(g @ (x_init - x))
    s = decay * s + lam * g
    den = np.sum(np.abs(s))
    d = max(d, r / den if den > 0 else 0.0)
    if mu is None:
      x = x + u
    else:  # PyTorch / optax Nesterov: m = mu m + u; step = u + mu m
      m = mu * m + u
      x = x + u + mu * m
    xs.append(x.copy())
    ds.append(d)
  return np.array(xs), np.array(ds)


@pytest.mark.parametrize("direction", ["default", "weighted_default", "adam", "weighted_adam"])
def test_scale_by_distance_matches_the_reference_loop(direction):
  with x64.enable_x64(True):
    rng = np.random.RandomState(0)
    q = np.linalg.qr(rng.randn(6, 6))[0]
    a_mat = q @ np.diag(np.logspace(0, 2, 6)) @ q.T
    x_star = rng.randn(6)
    grad_np = lambda x: a_mat @ (x - x_star)
    x0 = rng.randn(6) * 0.1
    adam = (0.9, 0.999) if direction.endswith("adam") else None
    weighted = direction.startswith("weighted")
    # A normaliser that may fall by 10% per step exercises the running maximum within 200 steps;
    # the weighted one converges faster and then steps past its stability edge, so it is checked
    # with the default 0.2% (its iterates reach 1e-9 of the minimiser by step 400, stably).
    max_rms_decay = 0.998 if direction == "weighted_default" else 0.9
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
    ref_x, ref_d = _distance_reference(x0, grad_np, 200, adam=adam, weighted=weighted, **kwargs)
    block = nag_optax.scale_by_distance(
      1e-4,
      step_scale=0.1,
      max_rms_decay=max_rms_decay,
      direction=optax.scale_by_adam(0.9, 0.999, 1e-8, nesterov=True) if adam else None,
      weighted_direction=(0.9, 0.999) if weighted and adam else None,
      weighted_mean_square=weighted and not adam,
    )
    tx = optax.chain(block, nag_optax.nesterov(0.9))
    x = jnp.asarray(x0)
    state = tx.init(x)
    xs, ds = [], []
    for _ in range(200):
      updates, state = tx.update(jnp.asarray(grad_np(np.asarray(x))), state, x)
      x = optax.apply_updates(x, updates)
      xs.append(np.asarray(x))
      ds.append(float(state[0].distance))
    np.testing.assert_allclose(np.array(ds), ref_d, rtol=1e-10)
    np.testing.assert_allclose(np.array(xs), ref_x, rtol=1e-9, atol=1e-12)
    assert ref_d[-1] > 100 * ref_d[0]  # the estimate grew: the test covers the growth branch


def test_weighted_direction_is_adam_while_the_estimate_is_constant():
  # w_k = d_k / d_0 = 1 while d never grows (a d_0 above the distance to the minimiser), so the
  # weighted moments and their normalisation (c_k = 1) leave Adam's direction as it is.
  x0 = jnp.array([0.3, -0.2, 0.1])
  grad = lambda x: jnp.array([1.0, 10.0, 100.0]) * (x - 0.05)
  runs = []
  for weighted in (None, (0.9, 0.999)):
    tx = nag_optax.scale_by_distance(
      1.0,  # above ||x_0 - x_*||_inf = 0.25, which bounds the estimate
      step_scale=0.01,
      max_relative_step=None,
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
    1e-3, direction=optax.scale_by_adam(), weighted_direction=(0.9, 0.999)
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
    tx = nag_optax.scale_by_distance(1e-6)
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
  tx = nag_optax.scale_by_distance(1.0)
  updates, state = tx.update(grads, tx.init(params), params)
  step_rms = float(optax.tree.norm(updates)) / np.sqrt(20)  # the default direction has rms 1
  np.testing.assert_allclose(step_rms, 0.1 * rms, rtol=1e-5)
  tx = nag_optax.auto_nadamw(1.0)
  _, state = tx.update(grads, tx.init(params), params)
  distance = float(optax.tree.get(state, "distance"))
  np.testing.assert_allclose(distance, 0.1 * rms, rtol=1e-5)


# The bounded annealing's floor, as a fraction of the distance rate (both optimizers' plateaus stop
# at 3%; auto_nadamw's anneals later, after 10 windows).
ANNEALING_FLOOR = {nag_optax.auto_nag_sgd: 0.03, nag_optax.auto_nadamw: 0.03}


@pytest.mark.parametrize("make", [nag_optax.auto_nag_sgd, nag_optax.auto_nadamw])
def test_pure_noise_at_a_minimum_never_collapses_the_rate(make):
  # 10,000 minibatch gradients that are pure noise around a minimum (the regime where the
  # hypergradient cosine is negative on average): the rate may anneal by the bounded plateau
  # factor but stays above that floor of its peak, and far from any 1e-8 floor.
  noise = jax.random.normal(jax.random.PRNGKey(0), (10_000, 32))
  tx = make()

  def step(carry, xi):
    x, state = carry
    g = x + xi  # gradient of 0.5||x||^2 plus unit noise
    updates, state = tx.update(g, state, x, value=0.5 * jnp.sum(x**2) + jnp.sum(xi * x))
    return (optax.apply_updates(x, updates), state), optax.tree.get(state, "learning_rate")

  x0 = jnp.ones(32)
  (x, _), rates = jax.jit(lambda c: jax.lax.scan(step, c, noise))((x0, tx.init(x0)))
  rates = np.asarray(rates)
  assert np.all(np.isfinite(rates)) and np.all(np.isfinite(np.asarray(x)))
  assert rates[-1] >= ANNEALING_FLOOR[make] * rates.max() * (1 - 1e-6), (rates[-1], rates.max())
  assert rates[-1] > 1e-3, rates[-1]


def test_plateau_factor_scales_the_step_not_the_estimate():
  tx = nag_optax.scale_by_distance(
    0.5,
    max_relative_step=None,
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
  with pytest.raises(ValueError, match="learning_rate"):
    nag_optax.scale_by_distance(0.0)
  with pytest.raises(ValueError, match="decay"):
    nag_optax.scale_by_distance(decay=1.5)
  with pytest.raises(TypeError, match="direction"):
    nag_optax.scale_by_distance(direction="adam")
  with pytest.raises(ValueError, match="weighted_direction"):
    nag_optax.scale_by_distance(weighted_direction=(0.9, 0.999))  # no direction to weight
  with pytest.raises(ValueError, match="weighted_mean_square"):
    nag_optax.scale_by_distance(direction=optax.scale_by_adam(), weighted_mean_square=True)
  with pytest.raises(ValueError, match="weighted_direction"):
    nag_optax.scale_by_distance(direction=optax.scale_by_adam(), weighted_direction=(0.9,))
  with pytest.raises(ValueError, match=r"weighted_direction\[1\]"):
    nag_optax.scale_by_distance(direction=optax.scale_by_adam(), weighted_direction=(0.9, 1.0))
  with pytest.raises(ValueError, match="momentum"):
    nag_optax.auto_nag_sgd(momentum=1.0)
  with pytest.raises(ValueError, match="b2"):
    nag_optax.auto_nadamw(b2=1.0)


@pytest.mark.parametrize("make", [nag_optax.auto_nag_sgd, nag_optax.auto_nadamw])
def test_training_loss_keeps_falling_over_10k_minibatch_steps(make):
  # The failure this guards against: a rate that decays to its floor while training is far from
  # done, so the loss freezes (what the hypergradient rate did from step ~1,000 on).
  x, y = _digits()
  graphdef, params = nnx.split(_MLP(nnx.Rngs(0)), nnx.Param)
  loss = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(
    nnx.merge(graphdef, p)(xb), yb
  ).mean()
  tx = make()
  rng = np.random.RandomState(0)
  batches = jnp.asarray(
    np.concatenate([rng.permutation(1024) for _ in range(640)]).reshape(-1, 64)[:10_000]
  )

  def step(carry, idx):
    params, state = carry
    value, grads = jax.value_and_grad(loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params, value=value)
    return (optax.apply_updates(params, updates), state), (
      value,
      optax.tree.get(state, "learning_rate"),
    )

  (params, _), (values, rates) = jax.jit(lambda c: jax.lax.scan(step, c, batches))(
    (params, tx.init(params))
  )
  values, rates = np.asarray(values), np.asarray(rates)
  early, late = values[2000:4000].mean(), values[8000:].mean()
  assert late < 0.5 * early, (early, late)
  assert rates[-1] >= ANNEALING_FLOOR[make] * rates.max() * (1 - 1e-6), (rates[-1], rates.max())


def _windows_until_progress(losses, drop, window):
  """Reference: the 1-based update at which the windowed mean loss first falls ``drop`` below
  the first window's mean (None if never)."""
  losses = np.asarray(losses, np.float64)
  first = None
  for j in range(len(losses) // window):
    mean = losses[j * window : (j + 1) * window].mean()
    if first is None:
      first = mean
    elif mean <= first - drop * abs(first):
      return (j + 1) * window
  return None


def _scales_fed(tx, losses):
  """The scale ``tx.update`` returns after each loss of ``losses``, and the final state."""

  def step(state, v):
    scale, state = tx.update(jnp.ones(()), state, value=v)
    return state, scale

  run = jax.jit(lambda vs: jax.lax.scan(step, tx.init(jnp.ones(())), vs))
  state, scales = run(jnp.asarray(losses, jnp.float32))
  return np.asarray(scales), state


def test_anneal_after_progress_is_the_plateau_fed_from_the_progress_on():
  rng = np.random.default_rng(0)
  # Flat (with noise) for 300 updates, then falling, then flat again at the bottom.
  losses = np.concatenate(
    [2.3 + 0.01 * rng.standard_normal(300), np.linspace(2.3, 0.5, 200), np.full(400, 0.5)]
  )
  inner = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, accumulation_size=10)
  tx = nag_optax.anneal_after_progress(inner, drop=0.1, window=20)
  start = _windows_until_progress(losses, 0.1, 20)
  assert start is not None and 300 < start < 500
  # Both fed update by update in one jitted scan (an eager loop took minutes).
  scales, state = _scales_fed(tx, losses)
  # The reference: the plateau alone, fed only the losses from the progress update on.
  ref, _ = _scales_fed(inner, losses[start - 1 :])
  np.testing.assert_array_equal(scales[: start - 1], 1.0)
  np.testing.assert_allclose(scales[start - 1 :], ref)
  assert ref.min() < 1.0  # the flat end is annealed once the run has made progress
  assert bool(state.progressed)


def _plateau_scales_on_a_flat_loss(tx, steps=2_000):
  noise = jax.random.normal(jax.random.PRNGKey(1), (steps, 16))

  def step(carry, xi):
    x, state = carry
    updates, state = tx.update(xi, state, x, value=2.3 + 0.01 * xi[0])
    return (optax.apply_updates(x, updates), state), optax.tree.get(state, "plateau_scale")

  x0 = jnp.ones(16)
  _, scales = jax.jit(lambda c: jax.lax.scan(step, c, noise))((x0, tx.init(x0)))
  return np.asarray(scales)


@pytest.mark.parametrize(
  "make,patience", [(nag_optax.auto_nag_sgd, 3), (nag_optax.auto_nadamw, 10)]
)
def test_a_loss_that_has_not_started_to_fall_is_not_annealed(make, patience):
  # A recurrent network at chance level: the loss is flat (noisy) for 2,000 updates. The
  # annealing reads a flat loss as convergence and, fed from the start, cuts the step to its
  # floor before training begins; the default waits for the loss to fall.
  np.testing.assert_array_equal(_plateau_scales_on_a_flat_loss(make()), 1.0)
  unwaited = optax.contrib.reduce_on_plateau(
    factor=0.5, patience=patience, accumulation_size=25, min_scale=0.03
  )
  np.testing.assert_allclose(_plateau_scales_on_a_flat_loss(make(plateau=unwaited))[-1], 0.03)


def test_anneal_after_progress_rejects_bad_arguments():
  plateau = optax.contrib.reduce_on_plateau()
  with pytest.raises(ValueError, match="drop"):
    nag_optax.anneal_after_progress(plateau, drop=1.0)
  with pytest.raises(ValueError, match="drop"):
    nag_optax.anneal_after_progress(plateau, drop=0.0)
  with pytest.raises(ValueError, match="window"):
    nag_optax.anneal_after_progress(plateau, window=0)
  with pytest.raises(TypeError, match="plateau"):
    nag_optax.anneal_after_progress(None)
  with pytest.raises(TypeError, match="plateau"):
    nag_optax.anneal_after_progress(0.5)
  tx = nag_optax.anneal_after_progress(plateau)
  with pytest.raises(ValueError, match="value"):
    tx.update(jnp.ones(()), tx.init(jnp.ones(())))
