"""The optimizers: nag() (drop-in equality with optax.sgd(nesterov=True) and PyTorch's SGD),
auto_nag() (full batch: convergence, robustness, configuration), auto_nag_sgd() and auto_nadamw()
(minibatch training: Flax loops, whole runs, pure noise, stopping)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import nag_optax
from problems import quadratics
from tests import loops

_W = np.linspace(-1.0, 1.0, 15).reshape(5, 3)


def _nonquadratic(x):
  """A smooth non-quadratic loss: softplus regression plus a quartic term."""
  z = jnp.asarray(_W, x.dtype) @ x
  return jnp.sum(jnp.logaddexp(0.0, z)) + 0.5 * jnp.sum(x**2) + 0.1 * jnp.sum(x**4)


def _pytorch_sgd_nesterov(grad_fn, x0, lr, momentum, num_steps):
  """PyTorch's documented SGD algorithm (dampening=0, nesterov=True, weight_decay=0) in NumPy."""
  x = np.array(x0, np.float64)
  buf = None
  out = [x.copy()]
  for _ in range(num_steps):
    g = np.asarray(grad_fn(jnp.asarray(x)), np.float64)
    buf = g.copy() if buf is None else momentum * buf + g
    x = x - lr * (g + momentum * buf)
    out.append(x.copy())
  return np.array(out)


@pytest.mark.parametrize("lr,momentum", [(0.05, 0.9), (0.2, 0.5), (0.01, 0.99)])
def test_nag_equals_optax_sgd_and_pytorch(x64, lr, momentum):
  x0 = jnp.array([1.5, -2.0, 0.5])
  num_steps = 300
  ours, _ = loops.iterates(nag_optax.nag(lr, momentum), _nonquadratic, x0, num_steps)
  theirs, _ = loops.iterates(optax.sgd(lr, momentum, nesterov=True), _nonquadratic, x0, num_steps)
  torch_like = _pytorch_sgd_nesterov(jax.jit(jax.grad(_nonquadratic)), x0, lr, momentum, num_steps)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(ours), torch_like, rtol=0, atol=1e-12)
  # The comparison is not vacuous: the iterates moved far from x0.
  assert np.linalg.norm(np.asarray(ours[-1] - x0)) > 0.5


def test_nag_schedule_learning_rate_is_applied_inside_the_buffer(x64):
  schedule = optax.piecewise_constant_schedule(0.125, {10: 0.5, 25: 0.5})  # exact in any dtype
  x0 = jnp.array([1.0, -1.0, 2.0])
  xs, _ = loops.iterates(nag_optax.nag(schedule, 0.9), _nonquadratic, x0, 40)
  grad = jax.grad(_nonquadratic)
  x, m = np.asarray(x0), np.zeros(3)
  for k in range(40):
    u = -float(schedule(jnp.asarray(k, jnp.int32))) * np.asarray(grad(jnp.asarray(x)))
    m = 0.9 * m + u
    x = x + u + 0.9 * m
  np.testing.assert_allclose(np.asarray(xs[-1]), x, atol=1e-12)
  # Optax's form (scale after accumulation) gives a visibly different iterate.
  theirs, _ = loops.iterates(optax.sgd(schedule, 0.9, nesterov=True), _nonquadratic, x0, 40)
  assert np.max(np.abs(np.asarray(theirs[-1]) - x)) > 1e-4


def test_nag_passes_schedule_and_restart_through(x64):
  tx = nag_optax.nag(0.1, schedule="convex", restart="gradient")
  state = tx.init(jnp.zeros(2))
  momentum_state = state[1]
  assert isinstance(momentum_state, nag_optax.NesterovState)
  _, state = tx.update(jnp.ones(2), state)
  _, state = tx.update(jnp.ones(2), state)
  t2 = (1 + 5**0.5) / 2
  t3 = (1 + (1 + 4 * t2 * t2) ** 0.5) / 2
  np.testing.assert_allclose(float(state[1].momentum), (t2 - 1) / t3, rtol=1e-14)
  tx = nag_optax.nag(0.1, schedule="strongly_convex", condition_number=100.0)
  _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
  np.testing.assert_allclose(float(state[1].momentum), 9 / 11, rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=0.1, momentum=1.0), "momentum"),
    (dict(learning_rate=0.1, momentum=-0.5), "momentum"),
    (dict(learning_rate=0.1, schedule="nesterov"), "schedule"),
    (dict(learning_rate=0.1, restart="yes"), "restart"),
  ],
)
def test_nag_bad_configuration_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    nag_optax.nag(**kwargs)


def test_nag_injected_hyperparameters_match(x64):
  x0 = jnp.array([1.5, -2.0, 0.5])
  injected = optax.inject_hyperparams(nag_optax.nag)(learning_rate=0.05, momentum=0.9)
  plain = nag_optax.nag(0.05, 0.9)
  a, state = loops.iterates(injected, _nonquadratic, x0, 100)
  b, _ = loops.iterates(plain, _nonquadratic, x0, 100)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)
  assert float(optax.tree.get(state, "learning_rate")) == 0.05
  # Changing the injected value changes the run.
  state.hyperparams["learning_rate"] = jnp.asarray(0.01)
  g = jax.grad(_nonquadratic)(x0)
  u_small, _ = injected.update(g, state, x0)
  state.hyperparams["learning_rate"] = jnp.asarray(0.05)
  u_big, _ = injected.update(g, state, x0)
  assert float(jnp.linalg.norm(u_big)) > float(jnp.linalg.norm(u_small))


# auto_nag(): full-batch problems.


def _auto_nag_steps(q, tx=None, *, with_value=False):
  """(updates to ||x - x*|| <= 1e-6 ||x0 - x*||, final x, final state) of auto_nag on ``q``."""
  tx = nag_optax.auto_nag(rtol=None) if tx is None else tx
  return loops.steps_to_target(
    tx, q.value, jnp.asarray(q.x0), jnp.asarray(q.x_star), 1e-6, 50_000, with_value=with_value
  )


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


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(method="bb"), "method"),
    (dict(method="spectral", schedule="convex"), "schedule"),
    (dict(method="spectral", safety=0.5), "safety"),
    (dict(method="spectral", restart=None), "restart"),
    (dict(method="spectral", accumulator_dtype=jnp.bfloat16), "accumulator_dtype"),
  ],
)
def test_auto_nag_spectral_rejects_nesterov_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    nag_optax.auto_nag(**kwargs)


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(schedule="fast"), "schedule"),
    (dict(rtol=-1.0), "rtol"),
    (dict(method="newton"), "method"),
  ],
)
def test_auto_nag_bad_configuration_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    nag_optax.auto_nag(**kwargs)


# auto_nag_sgd() and auto_nadamw(): minibatch training.


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
  "make,initial_learning_rate",
  [
    (nag_optax.auto_nag_sgd, 1e-4),
    (nag_optax.auto_nag_sgd, 1e-3),
    (nag_optax.auto_nag_sgd, 10.0),
    (nag_optax.auto_nadamw, 1e-6),
    (nag_optax.auto_nadamw, 1.0),
  ],
)
def test_nnx_training_reaches_a_loss_threshold(make, initial_learning_rate):
  x, y = _digits()
  model = _MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(initial_learning_rate=initial_learning_rate), wrt=nnx.Param)

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


def test_minibatch_optimizers_bad_configuration_raises():
  with pytest.raises(ValueError, match="momentum"):
    nag_optax.auto_nag_sgd(momentum=1.0)
  with pytest.raises(ValueError, match="b2"):
    nag_optax.auto_nadamw(b2=1.0)


# The minibatch optimizers' rate is self-tuned: no positional "learning rate" that means
# something else, and every hyperparameter optax.inject_hyperparams exposes takes effect.


@pytest.mark.parametrize(
  "make", [nag_optax.auto_nag_sgd, nag_optax.auto_nadamw, nag_optax.scale_by_distance]
)
def test_a_positional_learning_rate_is_rejected_saying_what_the_arguments_mean(make):
  with pytest.raises(TypeError, match=r"keyword arguments only.*initial_learning_rate=.*factor"):
    make(1e-3)


@pytest.mark.parametrize(
  "make,kwargs",
  # Without momentum, so that the update is this step's alone (a momentum buffer carries the
  # earlier steps, taken at the earlier factor).
  [(nag_optax.auto_nag_sgd, dict(momentum=0.0)), (nag_optax.auto_nadamw, {})],
)
def test_the_injected_learning_rate_takes_effect_mid_run(make, kwargs):
  params = {"w": jnp.linspace(-1.0, 1.0, 6)}
  grads = {"w": jnp.linspace(0.5, -0.3, 6)}
  tx = optax.inject_hyperparams(make)(**kwargs)
  assert "initial_learning_rate" not in tx.init(params).hyperparams  # read once: not exposed
  assert "max_relative_step" not in tx.init(params).hyperparams
  state = tx.init(params)
  for _ in range(5):
    _, state = tx.update(grads, state, params)
  full, _ = tx.update(grads, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.25)
  quarter, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(quarter["w"], 0.25 * full["w"], rtol=1e-6)
  assert float(jnp.max(jnp.abs(full["w"]))) > 0


@pytest.mark.parametrize("make", [nag_optax.auto_nag_sgd, nag_optax.auto_nadamw])
def test_init_only_and_array_sizing_arguments_go_in_static_args(make):
  with pytest.raises(TypeError, match=r"subsample sets the size of a state array.*static_args"):
    optax.inject_hyperparams(make)(subsample=8).init(jnp.ones(3))
  tx = optax.inject_hyperparams(make, static_args=("initial_learning_rate", "subsample"))(
    initial_learning_rate=1e-4, subsample=8
  )
  state = tx.init(jnp.ones(3))
  assert not {"initial_learning_rate", "subsample"} & set(state.hyperparams)
  assert float(optax.tree.get(state, "distance")) == pytest.approx(1e-4)


def test_a_learning_rate_schedule_scales_the_tuned_rate():
  # Params held fixed: the estimate stays at its initial value, so the factor alone moves the
  # step, update by update.
  schedule = lambda count: 1.0 / (1.0 + count)
  scaled = nag_optax.scale_by_distance(learning_rate=schedule, initial_learning_rate=1e-2)
  plain = nag_optax.scale_by_distance(initial_learning_rate=1e-2)
  params, grads = jnp.ones(4), jnp.full(4, 0.5)
  s_scaled, s_plain = scaled.init(params), plain.init(params)
  for k in range(4):
    u_scaled, s_scaled = scaled.update(grads, s_scaled, params)
    u_plain, s_plain = plain.update(grads, s_plain, params)
    np.testing.assert_allclose(u_scaled, schedule(k) * u_plain, rtol=1e-6)
    np.testing.assert_allclose(s_scaled.learning_rate, schedule(k + 1) * s_plain.learning_rate)


@pytest.mark.parametrize("make", [nag_optax.auto_nag_sgd, nag_optax.auto_nadamw])
def test_the_documented_stop_ends_a_saturated_run_soon_after_its_accuracy_stopped_improving(make):
  # A model that classifies every validation sample right from update 750 on, its validation
  # loss (evaluated every 50 updates, passed at every update) creeping down from 0.0037 to 0.0026
  # over the next 4,250 updates: the documented stop (a patience of five evaluations) ends the
  # run within 1.5x the step where the accuracy stopped improving.
  tx = make(validation_patience=250)
  evaluations = np.arange(0, 5000, 50)
  losses = np.where(
    evaluations < 750,
    0.0037 * (2.3 / 0.0037) ** (1 - evaluations / 750),
    0.0037 * (0.0026 / 0.0037) ** ((evaluations - 750) / 4250),
  )
  params = jnp.ones(4)
  state = tx.init(params)
  update = jax.jit(lambda s, v: tx.update(jnp.zeros(4), s, params, validation_loss=v)[1])
  stopped_at = None
  for step in range(5000):
    state = update(state, jnp.asarray(losses[step // 50], jnp.float32))
    if bool(nag_optax.should_stop(state)):
      stopped_at = step + 1
      break
  assert stopped_at is not None and stopped_at <= 1.5 * 750, stopped_at
  assert nag_optax.stop_reason(state) == nag_optax.StopReason.VALIDATION_PATIENCE
