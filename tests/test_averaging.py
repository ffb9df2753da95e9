"""average_iterates(): the polynomial-decay average of the iterates against a NumPy reference."""

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


def _problem():
  q = quadratics.make_quadratic(12, 50.0, seed=1)
  return q, jnp.asarray(q.x0)


def _reference_average(xs: np.ndarray, power: float) -> np.ndarray:
  """sum_s w_s x_s / sum_s w_s over the iterates x_1..x_t after each update, with Shamir &
  Zhang's polynomial-decay weights w_s = Gamma(s + power) / Gamma(s) (~ s^power)."""
  t = xs.shape[0] - 1
  s = np.arange(1, t + 1)
  log_w = np.array([math.lgamma(k + power) - math.lgamma(k) for k in s])
  w = np.exp(log_w - log_w.max())
  return (w[:, None] * xs[1:]).sum(0) / w.sum()


@pytest.mark.parametrize("power", [0.0, 1.0, 2.5, 7.0])
def test_average_matches_reference_weights(x64, power):
  q, x0 = _problem()
  inner = nag_optax.nag(0.5 / q.lipschitz)
  num_steps = 60
  xs, _ = loops.iterates(inner, q.value, x0, num_steps)
  _, state = loops.iterates(nag_optax.average_iterates(inner, power=power), q.value, x0, num_steps)
  expected = _reference_average(np.asarray(xs), power)
  np.testing.assert_allclose(nag_optax.averaged_params(state), expected, rtol=1e-12, atol=1e-13)
  if power == 0.0:  # the uniform (Polyak-Ruppert) average of x_1..x_t
    np.testing.assert_allclose(expected, np.asarray(xs)[1:].mean(0), rtol=1e-12)


def test_reference_catches_an_off_by_one_in_the_weights(x64):
  # The same average with weights Gamma(s + 1 + p) / Gamma(s + 1) (one step late) differs.
  q, x0 = _problem()
  xs, _ = loops.iterates(nag_optax.nag(0.5 / q.lipschitz), q.value, x0, 60)
  xs = np.asarray(xs)
  shifted = _reference_average(np.concatenate([xs[:1], xs[:1], xs[1:]]), 7.0)
  assert np.max(np.abs(shifted - _reference_average(xs, 7.0))) > 1e-4


def test_updates_and_inner_state_are_the_inner_transformations():
  q, x0 = _problem()
  inner = nag_optax.auto_nag(rtol=None)
  xs, inner_state = loops.iterates(inner, q.value, x0, 40)
  ys, state = loops.iterates(nag_optax.average_iterates(inner), q.value, x0, 40)
  chex.assert_trees_all_equal(xs, ys)
  chex.assert_trees_all_equal(inner_state, state.inner_state)
  assert int(state.count) == 40


def test_first_average_is_the_first_iterate_and_recent_iterates_dominate():
  q, x0 = _problem()
  inner = nag_optax.nag(0.5 / q.lipschitz)
  xs, state = loops.iterates(nag_optax.average_iterates(inner), q.value, x0, 1)
  np.testing.assert_allclose(nag_optax.averaged_params(state), xs[1], rtol=1e-6)
  # power 7: the last quarter of 400 iterates carries about 1 - 0.75^8 = 90% of the weight.
  s = np.arange(1, 401)
  w = np.exp([math.lgamma(k + 7.0) - math.lgamma(k) for k in s])
  np.testing.assert_allclose(w[300:].sum() / w.sum(), 1 - 0.75**8, atol=0.01)


def test_averaged_params_found_through_wrappers():
  params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  for tx in (
    nag_optax.auto_nadamw(),
    nag_optax.stop_when(nag_optax.average_iterates(optax.sgd(0.1)), max_steps=5),
    optax.inject_hyperparams(nag_optax.auto_nadamw)(b1=0.9),
    optax.MultiSteps(nag_optax.auto_nadamw(), every_k_schedule=2),
    optax.chain(optax.clip_by_global_norm(1.0), nag_optax.average_iterates(optax.adam(0.1))),
  ):
    state = tx.init(params)
    _, state = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p, value=1.0))(grads, state, params)
    avg = nag_optax.averaged_params(state, params)
    chex.assert_trees_all_equal_shapes(avg, params)


def test_averaged_params_without_an_average_names_the_fix():
  state = nag_optax.auto_nag_sgd().init({"w": jnp.ones(3)})
  with pytest.raises(ValueError, match="average_iterates"):
    nag_optax.averaged_params(state)


def test_low_precision_params_average_in_float32_and_cast_back():
  # x_t = -t/64 is exact in bfloat16 for t <= 200; the average's increments are not.
  params = {"w": jnp.zeros(4, jnp.bfloat16), "v": jnp.zeros(2, jnp.float32)}
  tx = nag_optax.average_iterates(optax.sgd(1.0 / 64.0))
  state = tx.init(params)
  assert state.averaged_params["w"].dtype == jnp.float32
  assert state.averaged_params["v"].dtype == jnp.float32
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(tx.update)
  for _ in range(200):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert params["w"].dtype == jnp.bfloat16 and float(params["w"][0]) == -200 / 64
  xs = -np.arange(201.0)[:, None] / 64.0
  expected = _reference_average(xs, 7.0)[0]
  np.testing.assert_allclose(nag_optax.averaged_params(state)["w"], expected, rtol=1e-5)
  cast = nag_optax.averaged_params(state, params)
  assert cast["w"].dtype == jnp.bfloat16 and cast["v"].dtype == jnp.float32


def test_nonfinite_step_leaves_the_average_unchanged():
  tx = nag_optax.auto_nadamw()
  params = jnp.ones(3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update(jnp.ones(3), state, params)
  before = nag_optax.averaged_params(state, params)
  updates, state = update(jnp.array([1.0, jnp.nan, 1.0]), state, params)
  chex.assert_trees_all_equal(updates, jnp.zeros(3))  # skipped: the params stay
  chex.assert_trees_all_equal(nag_optax.averaged_params(state, params), before)


@pytest.mark.parametrize(
  "kwargs,name",
  [(dict(power=-1.0), "power"), (dict(power=float("nan")), "power"), (dict(power="7"), "power")],
)
def test_bad_configuration_raises(kwargs, name):
  with pytest.raises((ValueError, TypeError), match=name):
    nag_optax.average_iterates(optax.sgd(0.1), **kwargs)


def test_bad_inner_and_missing_params_raise():
  with pytest.raises(TypeError, match="inner"):
    nag_optax.average_iterates(optax.sgd)  # the factory, not called
  tx = nag_optax.average_iterates(optax.sgd(0.1))
  state = tx.init(jnp.ones(2))
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), state)


def test_flax_nnx_evaluation_at_the_average():
  from flax import nnx

  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, nag_optax.average_iterates(optax.sgd(0.1), power=0.0), wrt=nnx.Param
  )
  x = jax.random.normal(jax.random.key(0), (8, 4))
  y = jnp.ones((8, 1))

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  def arrays(m):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.Param))]

  iterates = []
  for _ in range(3):
    step(model, optimizer)
    iterates.append(arrays(model))
  average = nag_optax.averaged_params(optimizer.opt_state, nnx.state(model, nnx.Param))
  eval_model = nnx.clone(model)
  nnx.update(eval_model, average)
  # power 0: the plain mean of the three iterates.
  for got, *its in zip(arrays(eval_model), *iterates):
    np.testing.assert_allclose(got, np.mean(its, 0), rtol=1e-6)
  assert not np.allclose(arrays(eval_model)[1], arrays(model)[1])


def test_averaged_params_checks_the_names_not_only_the_leaf_count():
  params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
  state = nag_optax.auto_nadamw().init(params)
  chex.assert_trees_all_equal_shapes(nag_optax.averaged_params(state, params), params)
  wrongly_named = {"kernel": jnp.ones(3), "bias": jnp.zeros(2)}  # two leaves, other names
  with pytest.raises(ValueError, match="structure of the averaged params"):
    nag_optax.averaged_params(state, wrongly_named)
  with pytest.raises(ValueError, match="structure of the averaged params"):
    nag_optax.averaged_params(state, {"w": jnp.ones(3)})


def _noisy_run(tx, steps=400):
  """The params and states of a noisy quadratic run (minibatch-like), jitted."""
  noise = jax.random.normal(jax.random.PRNGKey(3), (steps, 64))

  def step(carry, xi):
    x, state = carry
    updates, state = tx.update(x - 1.0 + xi, state, x)
    return (optax.apply_updates(x, updates), state), None

  x0 = jnp.zeros(64)
  (x, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, noise))((x0, tx.init(x0)))
  return x, state


def test_the_offset_average_follows_the_average_to_its_rounding():
  # The same iterates, the average kept itself (float32) and as a bfloat16 offset from the
  # params: they differ by the offset's rounding, a small fraction of the offset, not of the
  # params.
  x, full = _noisy_run(nag_optax.average_iterates(optax.sgd(0.05), power=7.0))
  x_off, offset = _noisy_run(
    nag_optax.average_iterates(optax.sgd(0.05), power=7.0, offset_dtype=jnp.bfloat16)
  )
  np.testing.assert_array_equal(x, x_off)  # the updates are the inner's, untouched
  assert offset.offset.dtype == jnp.bfloat16 and offset.averaged_params == ()
  average = nag_optax.averaged_params(full)
  from_offset = nag_optax.averaged_params(offset, x_off)
  gap = float(jnp.linalg.norm(average - x))  # how far the average is from the params
  assert gap > 0.05
  assert float(jnp.linalg.norm(from_offset - average)) <= 0.02 * gap


def test_the_offset_starts_at_zero_and_needs_the_params_to_be_read():
  tx = nag_optax.average_iterates(optax.sgd(0.1), offset_dtype=jnp.bfloat16)
  params = jnp.ones(3)
  updates, state = tx.update(jnp.ones(3), tx.init(params), params)
  np.testing.assert_array_equal(state.offset, 0.0)  # c_1 = 1: the average is the first iterate
  new_params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(nag_optax.averaged_params(state, new_params), new_params)
  with pytest.raises(ValueError, match="pass the current params"):
    nag_optax.averaged_params(state)
  with pytest.raises(ValueError, match="pass one of them"):
    nag_optax.average_iterates(
      optax.sgd(0.1), accumulator_dtype=jnp.float32, offset_dtype=jnp.bfloat16
    )
