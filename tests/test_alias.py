"""nag(): drop-in equality with optax.sgd(nesterov=True) and PyTorch's SGD, configuration."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
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
