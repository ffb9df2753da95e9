"""One optimizer's training run on a workload, as one jitted program.

:func:`make_trainer` builds ``train(params, batch_indices, *hyper) -> curves``: a ``lax.scan``
over evaluation blocks (an inner scan of ``eval_every`` steps) on the functional NNX API
(``nnx.split`` / ``nnx.merge``), float32 params. :func:`prepare` makes a workload's inputs for
its seeds (a seed fixes the initialisation and the batch order, shared by every method);
:func:`run_lanes` runs a trainer ``vmap``-ed over seeds and a grid of hyperparameter values in
one compiled call; :func:`ms_per_step` times one seed.
"""

import dataclasses
import math
import time
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nag_optax
from benchmarks.workloads.data import CONTEXT
from benchmarks.workloads.data import Workload
from benchmarks.workloads.data import windows
from benchmarks.workloads.roster import SELF_TUNING_FACTOR

# XLA:CPU compilation of the ~90 small programs dominates the quick mode; LLVM's expensive passes
# buy little on these tiny kernels.
COMPILER_OPTIONS: dict[str, str | bool] = {"xla_llvm_disable_expensive_passes": True}
TIMING_REPEATS = 3
# Evaluation runs over chunks of at most this many samples: XLA:CPU runs one forward pass over
# thousands of samples several times slower than over a few hundred at a time.
EVAL_CHUNK = 200


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


def in_chunks(x: jax.Array, y: Optional[jax.Array]) -> tuple:
  """(x, y, weights) of an evaluation split cut into equal chunks of at most ``EVAL_CHUNK``
  samples, on a new leading axis; the last chunk padded (weight 0)."""
  n = x.shape[0]
  count = -(-n // EVAL_CHUNK)
  size = -(-n // count)
  pad = count * size - n
  chunk = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
    count, size, *a.shape[1:]
  )
  weights = (jnp.arange(count * size) < n).astype(jnp.float32).reshape(count, size)
  return chunk(x), None if y is None else chunk(y), weights


def make_trainer(
  wl: Workload,
  make_optimizer: Callable[..., optax.GradientTransformation],
  blocks: int,
  eval_every: int,
  *,
  eval_params: Optional[Callable[[Any, Any], Any]] = None,
  record_stop: bool = False,
  pass_validation_loss: bool = False,
) -> Callable[..., dict[str, jax.Array]]:
  """A ``train(params, batch_indices, *hyper) -> dict`` for one optimizer factory (not jitted).

  ``make_optimizer(*hyper)`` builds the optimizer from traced hyperparameters (a grid is a
  ``vmap``); every optimizer gets ``value=loss`` at each step (wrapped by
  ``optax.with_extra_args_support``, so those that do not read it ignore it), and with
  ``pass_validation_loss`` also ``validation_loss=`` the latest measured validation loss
  (measured once before training, then after each block). Per evaluation block the result
  holds ``metric`` and ``val_loss`` (validation), ``train_loss`` (mean training loss in the
  block) and ``lr`` (the state's learning rate, NaN if none); at the end of the run,
  ``train_loss_eval`` is the training loss of the evaluated params on a fixed sample of the
  training data as large as the validation split, and with ``record_stop``, ``stop`` is the
  first step at which ``nag_optax.should_stop(state)`` held (-1 if never).
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
    x_sample, y_sample = x_tr[pick], None if y_tr is None else y_tr[pick]
  validation_chunks, sample_chunks = in_chunks(x_va, y_va), in_chunks(x_sample, y_sample)

  def logits_and_labels(params, xb, yb: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    if yb is None:  # the language model: the labels are the inputs shifted by one byte
      return model(xb[:, :-1]), xb[:, 1:]
    return model(xb), yb

  def loss_fn(params, xb, yb):
    logits, labels = logits_and_labels(params, xb, yb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def get_batch(idx):
    if wl.language_model:
      return x_tr[idx[:, None] + jnp.arange(context + 1)], None
    return x_tr[idx], None if y_tr is None else y_tr[idx]

  def evaluate(params, chunks=validation_chunks):
    """(metric, mean loss) over a split in chunks: accuracy, or for the LM bits per character."""

    def sums(chunk):
      xb, yb, weights = chunk
      logits, labels = logits_and_labels(params, xb, yb)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      correct = jnp.argmax(logits, -1) == labels
      if wl.language_model:  # per window: the mean over its positions
        losses, correct = losses.mean(-1), correct.mean(-1)
      return jnp.sum(weights * losses), jnp.sum(weights * correct)

    loss_sums, correct_sums = jax.lax.map(sums, chunks)
    count = jnp.sum(chunks[2])
    loss = jnp.sum(loss_sums) / count
    if wl.language_model:
      return loss / math.log(2.0), loss
    return jnp.sum(correct_sums) / count, loss

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
      carry = (params, state, val_loss, stop, t)
      return carry, (metric, val_loss, jnp.mean(values), learning_rate_of(state))

    batches = batches[: blocks * eval_every].reshape(blocks, eval_every, -1)
    carry0 = (params, state, val_loss0, jnp.int32(-1), jnp.int32(0))
    carry, (metric, val_loss, train_loss, lr) = jax.lax.scan(block, carry0, batches)
    # Once, at the end: a pass over a sample as large as the validation split at every block
    # would cost as much as the validation itself.
    _, train_loss_eval = evaluate(eval_params(carry[0], carry[1]), sample_chunks)
    return {
      "metric": metric,
      "val_loss": val_loss,
      "train_loss": train_loss,
      "train_loss_eval": train_loss_eval,
      "lr": lr,
      "stop": carry[3],
    }

  return run_one


@dataclasses.dataclass(frozen=True)
class Setup:
  """A workload ready to train: its budget B, evaluation interval and every seed's inputs."""

  wl: Workload
  budget: int
  eval_every: int
  seeds: tuple[int, ...]
  params: Any  # initial params, stacked over seeds
  batches: jax.Array  # (seeds, steps) batch indices, enough for the self-tuning runs (1.5 B)

  def take(self, seeds: int) -> "Setup":
    """The same workload on its first ``seeds`` seeds."""
    return dataclasses.replace(
      self,
      seeds=self.seeds[:seeds],
      params=jax.tree.map(lambda a: a[:seeds], self.params),
      batches=self.batches[:seeds],
    )

  @property
  def blocks_budget(self) -> int:
    """Evaluation blocks in B, the tuned baselines' run."""
    return self.budget // self.eval_every

  @property
  def blocks_self_tuning(self) -> int:
    """Evaluation blocks in 1.5 B, the self-tuning methods' run."""
    return int(SELF_TUNING_FACTOR * self.budget) // self.eval_every


def prepare(wl: Workload, budget: int, evals: int, seeds: Sequence[int]) -> Setup:
  """``wl`` with budget B, evaluated every B / ``evals`` steps, on ``seeds``."""
  eval_every = max(1, budget // evals)
  steps = int(SELF_TUNING_FACTOR * budget) // eval_every * eval_every
  params, batches = seed_inputs(wl, seeds, steps)
  return Setup(wl, budget, eval_every, tuple(seeds), params, batches)


class Timer:
  """Wall seconds per named part of a run, summed over its calls."""

  def __init__(self) -> None:
    self.parts: dict[str, float] = {}

  def add(self, part: str, seconds: float) -> None:
    self.parts[part] = self.parts.get(part, 0.0) + seconds


def stack_seeds(trees: Sequence[Any]) -> Any:
  """One tree whose leaves stack those of ``trees`` on a new leading (seed) axis."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def seed_inputs(wl: Workload, seeds: Sequence[int], steps: int) -> tuple[Any, jax.Array]:
  """The initial params and the batch order of every seed, stacked on a leading seed axis."""
  params = stack_seeds([wl.init_params(s)[1] for s in seeds])
  batches = jnp.stack([jnp.asarray(wl.batch_indices(s, steps)) for s in seeds])
  return params, batches


def run_lanes(
  trainer: Callable[..., dict[str, jax.Array]],
  params: Any,
  batches: jax.Array,
  grid: Sequence[float],
) -> tuple[dict[str, np.ndarray], float, float]:
  """Every grid value x every seed in one jitted call.

  Returns the curves as NumPy arrays of shape (grid values, seeds, ...), the wall seconds with
  compilation, and the seconds of the run alone.
  """
  many = jax.jit(jax.vmap(jax.vmap(trainer, in_axes=(0, 0, None)), in_axes=(None, None, 0)))
  t0 = time.perf_counter()
  compiled = many.lower(params, batches, jnp.asarray(grid, jnp.float32)).compile(COMPILER_OPTIONS)
  t1 = time.perf_counter()
  out = jax.device_get(compiled(params, batches, jnp.asarray(grid, jnp.float32)))
  t2 = time.perf_counter()
  return {k: np.asarray(v) for k, v in out.items()}, t2 - t0, t2 - t1


def ms_per_step(
  trainer: Callable[..., dict[str, jax.Array]], params: Any, batches: jax.Array, hyper: float
) -> float:
  """ms per step of one seed: the best of ``TIMING_REPEATS`` runs after compilation.

  ``trainer`` runs as many steps as ``batches`` (of the first seed) holds.
  """
  p0 = jax.tree.map(lambda a: a[0], params)
  b0 = batches[0]
  h = jnp.float32(hyper)
  one = jax.jit(trainer).lower(p0, b0, h).compile(COMPILER_OPTIONS)
  jax.block_until_ready(one(p0, b0, h))
  times = []
  for _ in range(TIMING_REPEATS):
    t0 = time.perf_counter()
    jax.block_until_ready(one(p0, b0, h))
    times.append(time.perf_counter() - t0)
  return 1e3 * min(times) / b0.shape[0]
