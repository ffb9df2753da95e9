"""Flax NNX and linen, sharding, checkpoints, optax wrappers: the idioms users already have."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax import serialization
from flax.training import train_state

import nag_optax
from tests import test_common

OPTIMIZER_NAMES = list(test_common.OPTIMIZERS)


def _loss_fn(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def _data():
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (32, 4))
  y = x @ jnp.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
  return x, y


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_flax_nnx_optimizer_with_value(name):
  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, test_common._make(name), wrt=nnx.Param)
  x, y = _data()

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(100)]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]


def test_should_stop_reads_an_nnx_optimizer_state():
  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, nag_optax.auto_nag_sgd(max_steps=3), wrt=nnx.Param)
  x, y = _data()
  stopped = []
  for _ in range(5):
    loss, grads = nnx.value_and_grad(_loss_fn)(model, x, y)
    optimizer.update(model, grads, value=loss)
    stopped.append(bool(nag_optax.should_stop(optimizer.opt_state)))
  assert stopped == [False, False, False, True, True]
  assert nag_optax.stop_reason(optimizer.opt_state) == nag_optax.StopReason.MAX_STEPS


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_flax_linen_train_state_without_extra_args(name):
  params = {"w": jnp.zeros((4, 1)), "b": jnp.zeros(1)}
  apply_fn = lambda p, x: x @ p["w"] + p["b"]
  state = train_state.TrainState.create(
    apply_fn=apply_fn, params=params, tx=test_common._make(name)
  )
  x, y = _data()

  @jax.jit
  def step(state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply_fn(p, x) - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(200):
    state, loss = step(state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  if name == "scale_by_backtracking_chain":
    # Without value/value_fn backtracking keeps its first (probe) step: documented, slow, safe.
    assert losses[-1] <= losses[0]
  else:
    assert losses[-1] < 0.5 * losses[0]


def test_auto_nag_under_masked_and_apply_if_finite():
  params = {"a": jnp.ones(3), "frozen": jnp.ones(2)}
  tx = optax.masked(nag_optax.auto_nag(), {"a": True, "frozen": False})
  tx = optax.apply_if_finite(tx, max_consecutive_errors=3)
  state = tx.init(params)
  grads = {"a": jnp.ones(3), "frozen": jnp.ones(2)}
  updates, state = tx.update(grads, state, params)
  assert float(jnp.abs(updates["a"]).sum()) > 0
  chex.assert_trees_all_equal(updates["frozen"], grads["frozen"])  # masked out: passed through
  bad = {"a": jnp.full(3, jnp.nan), "frozen": jnp.ones(2)}
  updates, state = tx.update(bad, state, params)
  chex.assert_tree_all_finite(updates)


def test_tuned_quantities_readable_with_optax_tree_get():
  state = nag_optax.auto_nag().init(jnp.ones(3))
  assert optax.tree.get(state, "learning_rate") is not None
  assert optax.tree.get(state, "momentum") is not None
  assert optax.tree.get(state, "restarts") is not None
  assert optax.tree.get(state, "stop") is not None


def _jitted_step(opt):
  """One jitted optax step with extra args on a small non-quadratic problem (for resume tests)."""
  fun = lambda x: jnp.sum(jnp.array([1.0, 30.0, 900.0]) * (x - 1.0) ** 2) + jnp.sum(x**4)

  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(fun)(params)
    updates, state = opt.update(grad, state, params, value=value, value_fn=fun)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize(
  "name",
  [
    "auto_nag",
    "nag",
    "scale_by_backtracking_chain",
    "auto_nag_sgd",
    "auto_nadamw",
    "auto_nadamw_factored",
  ],
)
def test_checkpoint_round_trip_resumes_bit_identically(name, tmp_path):
  opt = test_common._make(name)
  step = _jitted_step(opt)

  params = jnp.zeros(3)
  state = opt.init(params)
  for _ in range(20):
    params, state = step(params, state)
  blob = serialization.to_bytes((params, state))
  (tmp_path / "ckpt.msgpack").write_bytes(blob)
  uninterrupted = (params, state)
  for _ in range(30):
    uninterrupted = step(*uninterrupted)
  template = (jnp.zeros(3), opt.init(jnp.zeros(3)))
  restored = serialization.from_bytes(template, (tmp_path / "ckpt.msgpack").read_bytes())
  for _ in range(30):
    restored = step(*restored)
  chex.assert_trees_all_equal(restored, uninterrupted)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize(
  "name",
  ["auto_nag", "nag", "stop_when_nag", "auto_nag_sgd", "auto_nadamw", "auto_nadamw_factored"],
)
def test_sharded_params_give_sharded_state_and_single_device_results(name):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))
  target = jnp.arange(64.0 * 32).reshape(64, 32) / 1000.0
  fun = lambda w: jnp.sum((w - target) ** 2 * (1.0 + jnp.arange(32.0)))
  opt = test_common._make(name)

  def body(_, carry):
    params, state = carry
    value, grad = jax.value_and_grad(fun)(params)
    updates, state = opt.update(grad, state, params, value=value, value_fn=fun)
    return optax.apply_updates(params, updates), state

  # auto_nadamw's estimate grows 5,000-fold within 25 steps here and its weighted moments follow
  # it, which amplifies the reduction-order rounding (equal after 3 steps, 7e-9 after 10, 1e-4
  # after 25): it is compared after 12, still within the estimate's growth.
  steps = 12 if name.startswith("auto_nadamw") else 25

  def run(params):
    return jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))

  step = jax.jit(run)
  single = step(jnp.zeros((64, 32)))
  sharded_params = jax.device_put(jnp.zeros((64, 32)), sharding)
  sharded = step(sharded_params)
  # float32 reductions run in another order across shards: params agree to float32 precision;
  # differences of nearly equal gradients in the state only to an absolute 1e-4.
  chex.assert_trees_all_close(sharded[0], single[0], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(sharded[1], single[1], rtol=1e-4, atol=1e-4)
  # Every parameter-sized buffer of the state is sharded like the params.
  for leaf in jax.tree.leaves(sharded[1]):
    if getattr(leaf, "shape", ()) == (64, 32):
      assert leaf.sharding.is_equivalent_to(sharding, 2), leaf.sharding
  assert sharded[0].sharding.is_equivalent_to(sharding, 2)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize("spec", [("data", "model"), (None, "model")])
@pytest.mark.parametrize(
  "name", ["auto_nag", "auto_nag_sgd", "auto_nadamw", "auto_nadamw_factored"]
)
def test_sharded_update_reduces_without_gathering_params(name, spec):
  # (None, "model") shards the minor axis only: a reshape/ravel before a reduction would force
  # a gather there. The leaf is large enough for the minibatch optimizers' estimate to sample it
  # (a small leaf is gathered into the estimate's vector of small leaves, as documented); its
  # 1,088 rows are 4 shards of 16 x 17, so every 17th row lies on each shard.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  fun = lambda w: jnp.sum((w - 1.0) ** 2)
  opt = test_common._make(name)
  params = jax.device_put(jnp.zeros((1088, 64)), sharding)
  state = opt.init(params)

  def step(params, state):
    value, grad = jax.value_and_grad(fun)(params)
    return opt.update(grad, state, params, value=value, value_fn=fun)

  hlo = jax.jit(step).lower(params, state).compile().as_text()
  assert "all-reduce" in hlo  # global norms and dot products are cross-shard reductions
  assert "all-gather" not in hlo  # and no shard ever sees the whole parameter


def test_orbax_checkpoint_round_trip_resumes_bit_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  opt = nag_optax.auto_nag()
  step = _jitted_step(opt)

  params = jnp.zeros(3)
  state = opt.init(params)
  for _ in range(15):
    params, state = step(params, state)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  uninterrupted = (params, state)
  for _ in range(20):
    uninterrupted = step(*uninterrupted)
  template = {"params": jnp.zeros(3), "opt_state": opt.init(jnp.zeros(3))}
  restored = checkpointer.restore(tmp_path / "ckpt", template)
  resumed = (restored["params"], restored["opt_state"])
  for _ in range(20):
    resumed = step(*resumed)
  chex.assert_trees_all_equal(resumed, uninterrupted)
