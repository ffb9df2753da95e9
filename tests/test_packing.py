"""pack_state: the inner optimizer's updates, its state in one buffer per dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nag_optax

PARAMS = {"w": jnp.arange(8.0).reshape(4, 2) / 8.0, "b": jnp.zeros(2)}


def _loss(params, x):
  return jnp.mean((x @ params["w"] + params["b"] - 1.0) ** 2)


def _run(tx, steps=30, batched=False):
  """Updates and states of ``steps`` updates with the loss as ``value``, in one ``lax.scan``."""

  def step(carry, x):
    params, state = carry
    value, grads = jax.value_and_grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params, value=value)
    return (optax.apply_updates(params, updates), state), updates

  xs = jax.random.normal(jax.random.PRNGKey(0), (steps, 16, 4))
  (params, state), updates = jax.jit(lambda c: jax.lax.scan(step, c, xs))((PARAMS, tx.init(PARAMS)))
  return params, state, updates


@pytest.mark.parametrize(
  "make",
  [nag_optax.auto_nadamw, nag_optax.auto_nag_sgd, lambda: optax.adam(1e-2)],
  ids=["auto_nadamw", "auto_nag_sgd", "adam"],
)
def test_the_updates_and_the_state_are_the_inner_ones(make):
  params, state, updates = _run(make())
  packed_params, packed_state, packed_updates = _run(nag_optax.pack_state(make()))
  # The same arithmetic; XLA may fuse it differently, so equal to rounding.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, (params, updates), (packed_params, packed_updates))
  jax.tree.map(close, state, packed_state.unpacked())


def test_the_state_is_one_buffer_per_dtype_and_the_readers_find_their_states_inside():
  tx = nag_optax.pack_state(nag_optax.auto_nadamw(patience=50))
  state = tx.init(PARAMS)
  leaves = jax.tree.leaves(state)
  assert [x.dtype for x in leaves] == [jnp.int32, jnp.float32, jnp.bfloat16, jnp.bool_]
  assert all(x.ndim == 1 for x in leaves)
  inner_leaves = jax.tree.leaves(nag_optax.auto_nadamw().init(PARAMS))
  assert sum(x.size for x in leaves) == sum(x.size for x in inner_leaves)
  params, state, _ = _run(tx, steps=5)
  assert not bool(nag_optax.should_stop(state))
  assert nag_optax.stop_reason(state) == nag_optax.StopReason.NOT_STOPPED
  average = nag_optax.averaged_params(state, params)
  inner_state = _run(nag_optax.auto_nadamw(patience=50), steps=5)[1]
  inner_average = nag_optax.averaged_params(inner_state, params)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, average, inner_average)
  rate = optax.tree.get(state.unpacked(), "learning_rate")
  assert np.isfinite(rate) and rate > 0


def test_a_vmapped_state_is_read_problem_by_problem():
  def run(tx):
    starts = jnp.stack([jnp.zeros(3), jnp.ones(3)])
    states = jax.vmap(tx.init)(starts)
    step = jax.vmap(lambda p, s: tx.update(2.0 * p, s, p)[1])
    for _ in range(3):
      states = step(starts, states)
    return states

  inner = nag_optax.stop_when(optax.sgd(0.1), max_steps=2)
  states = run(nag_optax.pack_state(inner))
  assert states.buffers[0].ndim == 2  # (problems, packed)
  assert nag_optax.should_stop(states).tolist() == [True, True]
  assert list(nag_optax.stop_reason(states)) == [nag_optax.StopReason.MAX_STEPS] * 2
  jax.tree.map(np.testing.assert_array_equal, states.unpacked(), run(inner))


def test_nnx_optimizer_trains_on_a_packed_state_of_four_leaves():
  def train(tx):
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      optimizer.update(model, grads, value=loss, validation_loss=loss)
      return loss

    x = jax.random.normal(jax.random.PRNGKey(1), (32, 4))
    y = x @ jnp.array([[1.0], [-2.0], [0.5], [3.0]])
    losses = [float(step(model, optimizer, x, y)) for _ in range(60)]
    return model, optimizer, losses

  model, optimizer, losses = train(nag_optax.pack_state(nag_optax.auto_nadamw()))
  ref_model, ref_optimizer, ref_losses = train(nag_optax.auto_nadamw())
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < 0.5 * losses[0]
  assert len(jax.tree.leaves(nnx.state(optimizer, nnx.OptState))) == 5  # 4 buffers + nnx's step
  assert len(jax.tree.leaves(nnx.state(ref_optimizer, nnx.OptState))) == 26
  assert not bool(nag_optax.should_stop(optimizer.opt_state))
  params = nnx.state(model, nnx.Param)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    nag_optax.averaged_params(optimizer.opt_state, params),
    nag_optax.averaged_params(ref_optimizer.opt_state, nnx.state(ref_model, nnx.Param)),
  )


def test_bad_input_is_named():
  with pytest.raises(TypeError, match="inner must be an optax GradientTransformation"):
    nag_optax.pack_state(object())
  with pytest.raises(TypeError, match="call the factory"):
    nag_optax.pack_state(nag_optax.auto_nadamw)
  tx = nag_optax.pack_state(optax.adam(1e-2))
  with pytest.raises(TypeError, match="state must be the PackedState"):
    tx.update(PARAMS, optax.adam(1e-2).init(PARAMS), PARAMS)


def test_an_inner_state_that_changes_its_layout_is_refused():
  def init(params):
    return jnp.zeros((), jnp.int32)

  def update(updates, state, params=None):
    return updates, state.astype(jnp.float32)  # the dtype changes: no fixed layout

  tx = nag_optax.pack_state(optax.GradientTransformation(init, update))
  with pytest.raises(ValueError, match="keeps the layout of init"):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_optax_wrappers_and_an_orbax_checkpoint_carry_a_packed_state(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx = optax.MultiSteps(nag_optax.pack_state(nag_optax.auto_nadamw()), every_k_schedule=2)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(_loss)(params, jnp.ones((16, 4)))
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for _ in range(6):
    params, state = step(params, state)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(
    tmp_path / "ckpt", {"params": PARAMS, "opt_state": tx.init(PARAMS)}
  )
  uninterrupted, resumed = (params, state), (restored["params"], restored["opt_state"])
  for _ in range(4):
    uninterrupted, resumed = step(*uninterrupted), step(*resumed)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  assert int(nag_optax.averaged_params(resumed[1], resumed[0])["w"].size) == 8


def test_flax_serialization_writes_and_restores_a_packed_state():
  serialization = pytest.importorskip("flax.serialization")
  tx = nag_optax.pack_state(nag_optax.auto_nadamw())
  params, state, _ = _run(tx, steps=5)
  blob = serialization.to_bytes((params, state))
  restored = serialization.from_bytes((PARAMS, tx.init(PARAMS)), blob)
  assert isinstance(restored[1], nag_optax.PackedState) and restored[1].layout == state.layout
  jax.tree.map(np.testing.assert_array_equal, restored, (params, state))
