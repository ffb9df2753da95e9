"""What a Flax NNX training step on a small model costs: the arithmetic, or the state's leaves.

``python -m benchmarks.studies.nnx_leaves [--rounds 300]`` times one ``nnx.jit`` training step
of the README's ``nnx.Linear(4, 1)`` (mean squared error, batch 8 x 4) with ``optax.adamw``,
with ``optax.adamw`` chained with 20 ``optax.scale_by_schedule`` links that multiply by 1 (20
more scalar state leaves, no more arithmetic), with ``nag_optax.auto_nadamw()`` and with
``nag_optax.pack_state(nag_optax.auto_nadamw())``; each as called (Flax walks the graph of
variables on every call) and through ``nnx.cached_partial`` (which walks it once), and the same
update under plain ``jax.jit`` on a params dict. It prints the best and median step times and
the ``nnx.Optimizer``'s state leaves (its own step counter included). Under a minute on 2 cores.
"""

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import nag_optax

PADDING = 20

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "optax.adamw(1e-3)": lambda: optax.adamw(1e-3),
  f"optax.adamw(1e-3) + {PADDING} unit scale_by_schedule links": lambda: optax.chain(
    optax.adamw(1e-3), *(optax.scale_by_schedule(lambda _: 1.0) for _ in range(PADDING))
  ),
  "nag_optax.auto_nadamw()": nag_optax.auto_nadamw,
  "nag_optax.pack_state(nag_optax.auto_nadamw())": lambda: nag_optax.pack_state(
    nag_optax.auto_nadamw()
  ),
}


def _loss(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def _timed(call: Callable, rounds: int) -> tuple[float, float]:
  """Best and median seconds of ``call()`` (to ``block_until_ready``) after 5 warm-up calls."""
  for _ in range(5):
    jax.block_until_ready(call())
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  times.sort()
  return times[0], times[len(times) // 2]


def nnx_step(make: Callable, rounds: int, cached: bool) -> tuple[float, float, int]:
  """Best and median ``nnx.jit`` step time, and the ``nnx.Optimizer``'s state leaves."""
  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
  x, y = jnp.ones((8, 4)), jnp.ones((8, 1))

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads, value=loss)
    return loss

  if cached:
    bound = nnx.cached_partial(step, model, optimizer)
    best, median = _timed(lambda: bound(x, y), rounds)
  else:
    best, median = _timed(lambda: step(model, optimizer, x, y), rounds)
  return best, median, len(jax.tree.leaves(nnx.state(optimizer, nnx.OptState)))


def jit_step(make: Callable, rounds: int) -> tuple[float, float]:
  """Best and median step time of the same update under plain ``jax.jit`` (state donated)."""
  tx = make()
  params = {"kernel": jnp.ones((4, 1)), "bias": jnp.zeros((1,))}
  x, y = jnp.ones((8, 4)), jnp.ones((8, 1))

  def step(params, state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2))(
      params
    )
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step, donate_argnums=(0, 1))
  carry = [params, tx.init(jax.tree.map(jnp.copy, params))]

  def call():
    carry[:] = jitted(*carry)
    return carry

  return _timed(call, rounds)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.nnx_leaves",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--rounds", type=int, default=300)
  args = parser.parse_args(argv)
  print(
    "| optimizer | state leaves (nnx) | nnx.jit best / median (ms) | nnx.cached_partial "
    "best / median (ms) | jax.jit best / median (ms) |"
  )
  print("|---|---|---|---|---|")
  for name, make in OPTIMIZERS.items():
    best, median, leaves = nnx_step(make, args.rounds, cached=False)
    cached_best, cached_median, _ = nnx_step(make, args.rounds, cached=True)
    jit_best, jit_median = jit_step(make, args.rounds)
    print(
      f"| `{name}` | {leaves} | {1e3 * best:.3f} / {1e3 * median:.3f} | "
      f"{1e3 * cached_best:.3f} / {1e3 * cached_median:.3f} | "
      f"{1e3 * jit_best:.3f} / {1e3 * jit_median:.3f} |"
    )


if __name__ == "__main__":
  main()
