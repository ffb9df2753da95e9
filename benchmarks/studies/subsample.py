"""How well the subsampled distance estimate follows the full one along whole training runs.

``python -m benchmarks.studies.subsample [--seeds 0-2] [--steps 3000] [--quick]`` trains models
whose large leaves the estimate samples (float32 MLPs 40-512-512-10 on MNIST-1D and 64-512-512-10
on the digits, batch 64: their 512 x 512 matrix, 262,144 elements, is above
``scale_by_distance``'s sampling size) with each minibatch optimizer at its defaults but
``subsample=1`` (the full estimate), and beside it a *shadow* copy of the optimizer with the default
``subsample=16``, fed the same gradients at the same params: its estimate is the one the default
would have made on exactly that trajectory. Per run it prints the ratio of the shadow's estimate
to the full one over the run (median and range after the first 5% of the steps) and at the end;
then it trains the default (subsampled) optimizer itself and prints both runs' final validation
accuracy, evaluated at the iterate average where the optimizer keeps one. 35 minutes on 2 cores
shared with another run (``--quick``: 600 steps, one seed; a smoke test, not evidence).
"""

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nag_optax
from benchmarks.studies import seed_range
from benchmarks.workloads import data

WIDTH = 512
BATCH = 64
EVAL_EVERY = 100
SKIP_FRACTION = 0.05  # the estimate's first steps (d grows from 1e-6) are left out of the ratios

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "auto_nadamw": nag_optax.auto_nadamw,
  "auto_nag_sgd": nag_optax.auto_nag_sgd,
}


class WideMLP(nnx.Module):
  """``inputs -> 512 -> 512 -> 10`` with ReLU: two 512 x 512-sized matrices the estimate samples."""

  def __init__(self, inputs: int, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(inputs, WIDTH, rngs=rngs)
    self.hidden2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.out = nnx.Linear(WIDTH, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


def datasets() -> dict:
  """name -> (train, validation) arrays."""
  mnist1d = data.load_mnist1d_splits()
  digits = data.load_digits_splits()
  return {
    "MNIST-1D": (mnist1d["train"], mnist1d["validation"]),
    "digits": (digits["train"], digits["validation"]),
  }


def train(splits: tuple, make: Callable, seed: int, steps: int, shadow: bool) -> dict:
  """One run: the estimate (and the shadow's) after every step, validation accuracy at the end."""
  (x_tr, y_tr), (x_va, y_va) = splits
  inputs = int(np.prod(x_tr.shape[1:]))
  graphdef, params = nnx.split(WideMLP(inputs, nnx.Rngs(seed)), nnx.Param)
  tx = make(subsample=1) if shadow else make()
  shadow_tx = make()

  def loss_fn(p, x, y):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, idx):
    p, state, shadow_state = carry
    x, y = jnp.asarray(x_tr)[idx], jnp.asarray(y_tr)[idx]
    value, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, state = tx.update(grads, state, p, value=value)
    if shadow:
      _, shadow_state = shadow_tx.update(grads, shadow_state, p, value=value)
    distance = optax.tree.get(state, "distance")
    shadow_distance = optax.tree.get(shadow_state, "distance") if shadow else distance
    return (optax.apply_updates(p, updates), state, shadow_state), (distance, shadow_distance)

  rng = np.random.default_rng(seed)
  batches = np.stack([rng.choice(len(x_tr), BATCH, replace=False) for _ in range(steps)])
  run = jax.jit(lambda c, b: jax.lax.scan(step, c, b))
  carry = (params, tx.init(params), shadow_tx.init(params) if shadow else ())
  (params, state, _), (d, d_shadow) = run(carry, jnp.asarray(batches))
  try:
    evaluated = nag_optax.averaged_params(state, params)
  except ValueError:
    evaluated = params
  logits = nnx.merge(graphdef, evaluated)(jnp.asarray(x_va))
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y_va)))
  return dict(distance=np.asarray(d), shadow=np.asarray(d_shadow), accuracy=accuracy)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.subsample")
  parser.add_argument("--seeds", default="0-2")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--quick", action="store_true", help="600 steps, one seed")
  args = parser.parse_args(argv)
  seeds = [0] if args.quick else seed_range(args.seeds)
  steps = 600 if args.quick else args.steps
  start = time.perf_counter()
  print(
    "| data | optimizer | seed | shadow / full estimate: median [min, max] after "
    f"{SKIP_FRACTION:.0%} | at the end | accuracy, full estimate | accuracy, subsampled |"
  )
  print("|---|---|---|---|---|---|---|")
  ratios_all = []
  for data_name, splits in datasets().items():
    for opt_name, make in OPTIMIZERS.items():
      for seed in seeds:
        full = train(splits, make, seed, steps, shadow=True)
        sampled = train(splits, make, seed, steps, shadow=False)
        ratio = full["shadow"] / full["distance"]
        tail = ratio[int(SKIP_FRACTION * steps) :]
        ratios_all.append(tail)
        print(
          f"| {data_name} | {opt_name} | {seed} | {np.median(tail):.3f} [{tail.min():.3f}, "
          f"{tail.max():.3f}] | {ratio[-1]:.3f} | {full['accuracy']:.4f} | "
          f"{sampled['accuracy']:.4f} |"
        )
  pooled = np.concatenate(ratios_all)
  print(
    f"\nAll runs: the shadow's estimate over the full one, median {np.median(pooled):.3f}, "
    f"5-95% {np.percentile(pooled, 5):.3f}-{np.percentile(pooled, 95):.3f}; "
    f"{time.perf_counter() - start:.0f} s."
  )


if __name__ == "__main__":
  main()
