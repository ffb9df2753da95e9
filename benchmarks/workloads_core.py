"""Deep-learning workloads for the ``workloads`` suite: data, Flax NNX models, the training scan.

Every workload has a train / validation / test split that differs from the one the old
``minibatch`` suite tuned on (digits: ``random_state=1``, 60/20/20; MNIST-1D: the package's own
test part is the test split, the validation split is carved out of its train part; the stdlib
corpus: 90/5/5 by position). Training is one jitted ``lax.scan`` over evaluation blocks (an
inner scan of ``eval_every`` steps), ``vmap``-ed over seeds and learning rates by the suite, on
the functional NNX API (``nnx.split`` / ``nnx.merge``) with float32 parameters. A seed fixes the
initialisation and the batch order, shared by every method.
"""

import dataclasses
import functools
import hashlib
import math
import os
import sysconfig
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nag_optax

# ---------------------------------------------------------------------------------------------
# Data.


def load_digits_splits():
  """digits, pixels / 16, shape (n, 8, 8, 1): 60/20/20 stratified, ``random_state=1``."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  data = load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=1)
  x_va, x_te, y_va, y_te = train_test_split(
    x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=1
  )
  return dict(train=(x_tr, y_tr), validation=(x_va, y_va), test=(x_te, y_te))


MNIST1D_SAMPLES = 8000
MNIST1D_VALIDATION = 1000


@functools.lru_cache(maxsize=1)
def load_mnist1d_splits(num_samples: int = MNIST1D_SAMPLES):
  """MNIST-1D, generated procedurally (no download), shape (n, 40, 1).

  ``num_samples`` (default 8000, the package's default is 5000) are split 80/20 by the package
  into train and test; the last ``MNIST1D_VALIDATION`` of its train part are the validation split.
  """
  from mnist1d.data import get_dataset_args
  from mnist1d.data import make_dataset

  args = get_dataset_args()
  args.num_samples = num_samples
  state = np.random.get_state()  # make_dataset seeds NumPy's global generator
  try:
    d = make_dataset(args)
  finally:
    np.random.set_state(state)
  x = d["x"].astype(np.float32)[..., None]
  y = d["y"].astype(np.int32)
  xt, yt = d["x_test"].astype(np.float32)[..., None], d["y_test"].astype(np.int32)
  v = MNIST1D_VALIDATION
  return dict(train=(x[:-v], y[:-v]), validation=(x[-v:], y[-v:]), test=(xt, yt))


# The character-level corpus: the Python standard library's own source.
CORPUS_CHARS = 1_000_000
# SHA-256 of the first CORPUS_CHARS bytes on CPython 3.11.7 (other versions give another corpus;
# the suite says so and runs anyway).
CORPUS_SHA256 = "7c523657e50ee4486e352772639087a57316a9830ce0c930319fe2ddc43257df"
CORPUS_EXCLUDED_DIRS = ("test", "tests", "site-packages", "idle_test", "__pycache__")


def stdlib_files(root: Optional[str] = None) -> list:
  """Sorted relative paths of the ``*.py`` files under the stdlib dir, test dirs excluded."""
  root = root or sysconfig.get_paths()["stdlib"]
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in CORPUS_EXCLUDED_DIRS]
    for name in filenames:
      if name.endswith(".py"):
        paths.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
  return sorted(paths)


def build_corpus(root: Optional[str] = None, num_chars: int = CORPUS_CHARS) -> tuple:
  """(bytes, sha256 hex, number of files used): the sorted files concatenated, cut at num_chars."""
  root = root or sysconfig.get_paths()["stdlib"]
  chunks, total, used = [], 0, 0
  for rel in stdlib_files(root):
    if total >= num_chars:
      break
    with open(os.path.join(root, rel), "rb") as f:
      data = f.read()
    chunks.append(data)
    total += len(data)
    used += 1
  corpus = b"".join(chunks)[:num_chars]
  return corpus, hashlib.sha256(corpus).hexdigest(), used


CONTEXT = 64


def load_corpus_splits(num_chars: int = CORPUS_CHARS):
  """Byte arrays: first 90% train, next 5% validation, last 5% test; plus corpus info."""
  corpus, sha, files = build_corpus(num_chars=num_chars)
  arr = np.frombuffer(corpus, np.uint8).astype(np.int32)
  n = len(arr)
  a, b = int(0.9 * n), int(0.95 * n)
  info = dict(
    chars=n, sha256=sha, files=files, pinned_sha256=CORPUS_SHA256, sha_matches=sha == CORPUS_SHA256
  )
  return dict(train=arr[:a], validation=arr[a:b], test=arr[b:]), info


def windows(arr: np.ndarray, count: int, context: int = CONTEXT) -> np.ndarray:
  """``count`` evenly spaced windows of context + 1 bytes (input and shifted target)."""
  starts = np.linspace(0, len(arr) - context - 2, count).astype(np.int64)
  return np.stack([arr[s : s + context + 1] for s in starts])


# ---------------------------------------------------------------------------------------------
# Models (float32).


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
  gradient of ``lax.conv`` on these tiny images far slower than this matmul.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
      [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
    )
    return patches @ self.kernel[...].reshape(9 * c, -1) + self.bias[...]


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


class Conv1D(nnx.Module):
  """A 1-D 'SAME' convolution of odd width as one matmul over patches (im2col)."""

  def __init__(self, cin: int, cout: int, width: int = 5, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.width = width
    self.kernel = nnx.Param(init(rngs.params(), (width, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    n, length, c = x.shape
    half = self.width // 2
    xp = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
    patches = jnp.concatenate([xp[:, i : i + length, :] for i in range(self.width)], axis=-1)
    return patches @ self.kernel[...].reshape(self.width * c, -1) + self.bias[...]


def _pool1d(x):
  n, length, c = x.shape
  return x.reshape(n, length // 2, 2, c).mean(axis=2)


class CNN1D(nnx.Module):
  """MNIST-1D: three width-5 convolutions (32 channels, ReLU, each followed by 2x average
  pooling: length 40 -> 20 -> 10 -> 5) and a dense layer."""

  def __init__(self, rngs: nnx.Rngs, channels: int = 32):
    self.conv1 = Conv1D(1, channels, rngs=rngs)
    self.conv2 = Conv1D(channels, channels, rngs=rngs)
    self.conv3 = Conv1D(channels, channels, rngs=rngs)
    self.out = nnx.Linear(5 * channels, 10, rngs=rngs)

  def __call__(self, x):
    for conv in (self.conv1, self.conv2, self.conv3):
      x = _pool1d(jax.nn.relu(conv(x)))
    return self.out(x.reshape(x.shape[0], -1))


class ResBlock1D(nnx.Module):
  """Pre-norm residual block: x + conv(relu(conv(relu(LayerNorm(x)))))."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(channels, rngs=rngs)
    self.conv1 = Conv1D(channels, channels, 3, rngs=rngs)
    self.conv2 = Conv1D(channels, channels, 3, rngs=rngs)

  def __call__(self, x):
    return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(self.norm(x)))))


class ResNet1D(nnx.Module):
  """MNIST-1D: a width-5 stem convolution and 2x pooling (length 20), four residual blocks of
  two width-3 convolutions with LayerNorm (10 convolutions in all), LayerNorm, mean pooling,
  a dense layer."""

  def __init__(self, rngs: nnx.Rngs, channels: int = 24, blocks: int = 4):
    self.stem = Conv1D(1, channels, 5, rngs=rngs)
    self.blocks = (
      nnx.List([ResBlock1D(channels, rngs=rngs) for _ in range(blocks)])
      if hasattr(nnx, "List")
      else [ResBlock1D(channels, rngs=rngs) for _ in range(blocks)]
    )
    self.norm = nnx.LayerNorm(channels, rngs=rngs)
    self.out = nnx.Linear(channels, 10, rngs=rngs)

  def __call__(self, x):
    x = _pool1d(self.stem(x))
    for block in self.blocks:
      x = block(x)
    return self.out(jax.nn.relu(self.norm(x)).mean(axis=1))


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention written out (one qkv matmul, softmax, one output matmul):
  the same maths as ``nnx.MultiHeadAttention`` with a causal mask, less to trace and compile."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
    self.out = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, x):
    n, length, width = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(n, length, 3, self.heads, -1), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (n, length, heads, head_dim)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    return self.out(jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, width))


class TransformerBlock(nnx.Module):
  """Pre-norm causal self-attention and a 4x MLP (GELU)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attention = CausalSelfAttention(width, heads, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """Byte-level causal transformer LM: embedding + learned positions, pre-norm blocks, head."""

  def __init__(
    self,
    rngs: nnx.Rngs,
    width: int = 64,
    heads: int = 4,
    layers: int = 2,
    context: int = CONTEXT,
    vocab: int = 256,
  ):
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
    blocks = [TransformerBlock(width, heads, rngs=rngs) for _ in range(layers)]
    self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, vocab, rngs=rngs)

  def __call__(self, tokens):
    length = tokens.shape[1]
    x = self.embed(tokens) + self.position[...][:length]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))


# ---------------------------------------------------------------------------------------------
# Workloads.


@dataclasses.dataclass
class Workload:
  """One model on one data set, with its batches and its evaluation."""

  name: str
  label: str
  model: Callable[[nnx.Rngs], nnx.Module]
  splits: dict  # "train" / "validation" / "test": (x, y) for classification, bytes for the LM
  batch: int
  metric: str  # "accuracy" or "bits per character"
  higher_is_better: bool
  language_model: bool = False
  info: dict = dataclasses.field(default_factory=dict)
  eval_windows: int = 64  # LM: validation windows of CONTEXT + 1 bytes

  @property
  def n_train(self) -> int:
    train = self.splits["train"]
    return len(train) - CONTEXT - 1 if self.language_model else len(train[0])

  def batch_indices(self, seed: int, steps: int) -> np.ndarray:
    """(steps, batch) int32: classification, a fresh permutation per epoch (partial last batch
    dropped); LM, uniformly drawn window starts."""
    rng = np.random.RandomState(1000 + seed)
    if self.language_model:
      return rng.randint(0, self.n_train, size=(steps, self.batch)).astype(np.int32)
    per_epoch = self.n_train // self.batch
    epochs = -(-steps // per_epoch)
    idx = np.concatenate(
      [rng.permutation(self.n_train)[: per_epoch * self.batch] for _ in range(epochs)]
    )
    return idx[: steps * self.batch].reshape(steps, self.batch).astype(np.int32)

  def init_params(self, seed: int):
    """(graphdef, params) of a freshly initialised model."""
    return nnx.split(self.model(nnx.Rngs(seed)), nnx.Param)

  def arrays(self, split: str):
    """Device arrays of one split: (x, y), or for the LM (train bytes or eval windows, None)."""
    data = self.splits[split]
    if self.language_model:
      if split == "train":
        return jnp.asarray(data), None
      return jnp.asarray(windows(data, self.eval_windows)), None
    return jnp.asarray(data[0]), jnp.asarray(data[1])


def digits_mlp() -> Workload:
  return Workload("digits_mlp", "digits MLP", MLP, load_digits_splits(), 64, "accuracy", True)


def digits_cnn() -> Workload:
  return Workload("digits_cnn", "digits CNN", CNN, load_digits_splits(), 64, "accuracy", True)


def mnist1d_cnn() -> Workload:
  return Workload("mnist1d_cnn", "MNIST-1D CNN", CNN1D, load_mnist1d_splits(), 64, "accuracy", True)


def mnist1d_resnet() -> Workload:
  return Workload(
    "mnist1d_resnet", "MNIST-1D ResNet+LN", ResNet1D, load_mnist1d_splits(), 64, "accuracy", True
  )


def stdlib_lm() -> Workload:
  splits, info = load_corpus_splits()
  return Workload(
    "stdlib_lm",
    "stdlib char LM",
    CharTransformer,
    splits,
    8,
    "bits per character",
    False,
    language_model=True,
    info=info,
  )


WORKLOADS = {
  "digits_mlp": digits_mlp,
  "digits_cnn": digits_cnn,
  "mnist1d_cnn": mnist1d_cnn,
  "mnist1d_resnet": mnist1d_resnet,
  "stdlib_lm": stdlib_lm,
}


# ---------------------------------------------------------------------------------------------
# Training.


def learning_rate_of(state) -> jax.Array:
  """The first ``learning_rate`` leaf of an optimizer state (NaN if there is none)."""
  leaves = [
    v
    for _, v in optax.tree.get_all_with_path(
      state, "learning_rate", filtering=lambda _, v: isinstance(v, jax.Array)
    )
  ]
  return jnp.ravel(leaves[0])[0].astype(jnp.float32) if leaves else jnp.float32(jnp.nan)


def evaluated_params(params, state):
  """The params a method is evaluated at: its iterate average when its state keeps one
  (``nag_optax.average_iterates``, e.g. inside ``auto_nadamw()``), else the training params.
  Decided from the state's structure, at trace time."""
  try:
    return nag_optax.averaged_params(state, params)
  except ValueError:
    return params


def make_trainer(
  wl: Workload,
  make_optimizer: Callable[..., optax.GradientTransformation],
  blocks: int,
  eval_every: int,
  *,
  eval_params: Optional[Callable] = None,
  record_stop: bool = False,
  pass_validation_loss: bool = False,
):
  """A ``train(params, batch_indices, *hyper) -> dict`` for one optimizer factory (not jitted).

  ``make_optimizer(*hyper)`` builds the optimizer from traced hyperparameters (a grid is a
  ``vmap``); every optimizer gets ``value=loss`` at each step (wrapped by
  ``optax.with_extra_args_support``, so those that do not read it ignore it), and with
  ``pass_validation_loss`` also ``validation_loss=`` the latest measured validation loss
  (measured once before training, then after each block). Per evaluation block the result
  holds ``metric`` and ``val_loss`` (validation), ``train_loss`` (mean training loss in the
  block), ``train_loss_eval`` (the training loss of the evaluated params on a fixed sample of
  the training data as large as the validation split) and ``lr`` (the state's learning rate, NaN
  if none); with ``record_stop``, ``stop`` is the first step at which
  ``nag_optax.should_stop(state)`` held (-1 if never).
  ``eval_params(params, state)`` maps the training params to the evaluated ones; by default
  :func:`evaluated_params` (the iterate average of a method that keeps one).
  """
  graphdef, _ = wl.init_params(0)
  x_tr, y_tr = wl.arrays("train")
  x_va, y_va = wl.arrays("validation")
  context = CONTEXT
  eval_params = eval_params or evaluated_params
  n_sample = x_va.shape[0]
  if wl.language_model:
    x_sample, y_sample = jnp.asarray(windows(wl.splits["train"], n_sample, context)), None
  else:
    pick = np.linspace(0, x_tr.shape[0] - 1, n_sample).astype(np.int64)
    x_sample, y_sample = x_tr[pick], y_tr[pick]

  def logits_and_labels(params, xb, yb):
    model = nnx.merge(graphdef, params)
    if wl.language_model:
      return model(xb[:, :-1]), xb[:, 1:]
    return model(xb), yb

  def loss_fn(params, xb, yb):
    logits, labels = logits_and_labels(params, xb, yb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def get_batch(idx):
    if wl.language_model:
      return x_tr[idx[:, None] + jnp.arange(context + 1)], None
    return x_tr[idx], y_tr[idx]

  def evaluate(params):
    logits, labels = logits_and_labels(params, x_va, y_va)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if wl.language_model:
      return loss / math.log(2.0), loss
    return jnp.mean(jnp.argmax(logits, -1) == labels).astype(jnp.float32), loss

  def run_one(params, batches, *hyper):
    opt = optax.with_extra_args_support(make_optimizer(*hyper))
    state = opt.init(params)
    _, val_loss0 = evaluate(params)

    def step(carry, idx):
      params, state, val_loss, stop, t = carry
      xb, yb = get_batch(idx)
      value, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
      extra = {"value": value}
      if pass_validation_loss:
        extra["validation_loss"] = val_loss
      updates, state = opt.update(grads, state, params, **extra)
      params = optax.apply_updates(params, updates)
      t = t + 1
      if record_stop:
        stop = jnp.where((stop < 0) & nag_optax.should_stop(state), t, stop)
      return (params, state, val_loss, stop, t), value

    def block(carry, block_batches):
      carry, values = jax.lax.scan(step, carry, block_batches)
      params, state, _, stop, t = carry
      shown = eval_params(params, state)
      metric, val_loss = evaluate(shown)
      train_loss_eval = loss_fn(shown, x_sample, y_sample)
      carry = (params, state, val_loss, stop, t)
      return carry, (metric, val_loss, jnp.mean(values), train_loss_eval, learning_rate_of(state))

    batches = batches[: blocks * eval_every].reshape(blocks, eval_every, -1)
    carry0 = (params, state, val_loss0, jnp.int32(-1), jnp.int32(0))
    carry, (metric, val_loss, train_loss, train_loss_eval, lr) = jax.lax.scan(
      block, carry0, batches
    )
    return {
      "metric": metric,
      "val_loss": val_loss,
      "train_loss": train_loss,
      "train_loss_eval": train_loss_eval,
      "lr": lr,
      "stop": carry[3],
    }

  return run_one
