"""Minibatch training on scikit-learn digits with Flax NNX models: data, models, training scan.

Shared by the ``minibatch`` suite and by tests. The protocol follows ANCHORS.md: an 80/20
stratified split (``random_state=0``), pixels scaled to [0, 1], batch 64 drawn from a fresh
permutation each epoch (the last partial batch of an epoch is dropped), test accuracy measured
every ``EVAL_EVERY`` steps. A seed fixes both the initialisation and the batch order, so every
optimizer sees the same batches for a given seed.

Training is one jitted ``lax.scan`` over evaluation blocks (an inner scan of ``EVAL_EVERY``
steps), ``vmap``-ed over seeds (and, for a learning-rate grid, over learning rates), on the
functional NNX API (``nnx.split`` / ``nnx.merge``) with float32 parameters.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

BATCH = 64
EVAL_EVERY = 25
TARGET_ACCURACY = 0.97


def load_digits_split():
  """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1], shape (n, 8, 8, 1)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  data = load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
  return x_tr, y_tr, x_te, y_te


class MLP(nnx.Module):
  """64-128-10 with ReLU."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(jax.nn.relu(self.hidden(x)))


class Conv3x3(nnx.Module):
  """A 3x3 'SAME' convolution written as one matmul over 3x3 patches (im2col).

  Same maths and initialisation as ``nnx.Conv(kernel_size=(3, 3))``; XLA:CPU runs the
  gradient of ``lax.conv`` on these tiny images about 50x slower than this matmul.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                              axis=-1)
    return patches @ self.kernel.value.reshape(9 * c, -1) + self.bias.value


class CNN(nnx.Module):
  """Two 3x3 convolutions (16 and 32 channels, ReLU), 2x2 average pooling, a dense layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = Conv3x3(1, 16, rngs=rngs)
    self.conv2 = Conv3x3(16, 32, rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    return self.out(x.reshape(x.shape[0], -1))


MODELS = {"mlp": MLP, "cnn": CNN}


def batch_indices(seed: int, steps: int, n_train: int, batch: int = BATCH) -> np.ndarray:
  """(steps, batch) indices: a new permutation each epoch, the partial last batch dropped."""
  rng = np.random.RandomState(seed)
  per_epoch = n_train // batch
  epochs = -(-steps // per_epoch)
  idx = np.concatenate([rng.permutation(n_train)[:per_epoch * batch] for _ in range(epochs)])
  return idx[:steps * batch].reshape(steps, batch).astype(np.int32)


def init_params(model: str, seed: int):
  """(graphdef, params) of a freshly initialised model."""
  net = MODELS[model](nnx.Rngs(seed))
  graphdef, params = nnx.split(net, nnx.Param)
  return graphdef, params


def make_trainer(model: str, data, make_optimizer: Callable[..., optax.GradientTransformation],
                 steps: int, *, pass_value: bool = True,
                 eval_params: Optional[Callable] = None):
  """A jitted ``train(seed_params, seed_batches, *hyper) -> dict`` for one optimizer factory.

  ``make_optimizer(*hyper)`` builds the optimizer from traced hyperparameters (so a grid is a
  ``vmap``). The returned dict holds ``accuracy`` and ``loss`` per evaluation block (the test
  accuracy after each block and the mean training loss within it), and, as ``lr``, the state's
  ``learning_rate`` after each block (NaN for optimizers without one).
  ``eval_params(params, state)`` maps training params to the params to evaluate
  (schedule-free's averaged iterate); the identity by default.
  """
  x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in data)
  graphdef, _ = init_params(model, 0)
  blocks = steps // EVAL_EVERY

  def loss_fn(params, xb, yb):
    logits = nnx.merge(graphdef, params)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def accuracy(params):
    logits = nnx.merge(graphdef, params)(x_te)
    return jnp.mean(jnp.argmax(logits, -1) == y_te)

  def learning_rate(state):
    leaves = [v for _, v in optax.tree.get_all_with_path(
        state, "learning_rate", filtering=lambda _, v: isinstance(v, jax.Array))]
    return jnp.ravel(leaves[0])[0].astype(jnp.float32) if leaves else jnp.float32(jnp.nan)

  def run_one(params, batches, *hyper):
    opt = make_optimizer(*hyper)
    state = opt.init(params)

    def step(carry, idx):
      params, state = carry
      xb, yb = x_tr[idx], y_tr[idx]
      value, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
      extra = {"value": value} if pass_value else {}
      updates, state = opt.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state), value

    def block(carry, block_batches):
      carry, values = jax.lax.scan(step, carry, block_batches)
      params, state = carry
      shown = eval_params(params, state) if eval_params else params
      return carry, (accuracy(shown), jnp.mean(values), learning_rate(state))

    batches = batches[:blocks * EVAL_EVERY].reshape(blocks, EVAL_EVERY, -1)
    _, (acc, loss, lr) = jax.lax.scan(block, (params, state), batches)
    return {"accuracy": acc, "loss": loss, "lr": lr}

  return jax.jit(run_one)


def steps_to_target(accuracy: np.ndarray, target: float = TARGET_ACCURACY) -> Optional[int]:
  """The first evaluation step whose test accuracy is >= target (None if never)."""
  hit = np.nonzero(np.asarray(accuracy) >= target)[0]
  return int((hit[0] + 1) * EVAL_EVERY) if hit.size else None
