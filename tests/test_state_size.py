"""What each public optimizer's state costs, counted from ``jax.eval_shape`` (no timing).

Memory decides whether an optimizer can be used on a large model at all, so it is a contract:
the state's bytes, in float32 parameter-sized buffers, on a model whose leaves are large enough
for the estimate's subsample and the factored moment to apply, and the state's leaf count
(Flax NNX pays a fixed cost per leaf on every jitted call).
"""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import nag_optax

# A transformer-sized stack of dense layers, and a small CNN with 8 parameter leaves.
LARGE = {f"layer{i}": {"w": jnp.zeros((512, 1024)), "b": jnp.zeros((1024,))} for i in range(2)} | {
  "head": {"w": jnp.zeros((1024, 512)), "b": jnp.zeros((512,))}
}
CNN = {
  "conv1": {"kernel": jnp.zeros((3, 3, 1, 16)), "bias": jnp.zeros((16,))},
  "conv2": {"kernel": jnp.zeros((3, 3, 16, 32)), "bias": jnp.zeros((32,))},
  "dense1": {"kernel": jnp.zeros((2048, 64)), "bias": jnp.zeros((64,))},
  "dense2": {"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros((10,))},
}


def buffers(tx, params) -> float:
  """The state's bytes over the params' count times 4: float32 parameter-sized buffers."""
  shapes = jax.eval_shape(tx.init, params)
  state_bytes = sum(
    math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes)
  )
  return state_bytes / (4 * optax.tree.size(params))


def leaves(tx, params) -> int:
  return len(jax.tree.leaves(jax.eval_shape(tx.init, params)))


# optimizer -> (the most buffers on LARGE, its plain Optax counterpart's buffers)
BUDGETS = {
  "auto_nadamw": (nag_optax.auto_nadamw, 2.25),  # Adam's 2 plus a quarter
  "auto_nadamw(factored=True)": (lambda: nag_optax.auto_nadamw(factored=True), 1.25),
  "auto_nag_sgd": (nag_optax.auto_nag_sgd, 1.25),  # SGD momentum's 1 plus a quarter
  "nag": (lambda: nag_optax.nag(0.1), 1.0),  # optax.sgd(nesterov=True)'s
  "auto_nag": (nag_optax.auto_nag, 3.0),  # momentum, previous point and gradient
}


@pytest.mark.parametrize("name", list(BUDGETS))
def test_state_fits_its_memory_budget(name):
  make, budget = BUDGETS[name]
  assert buffers(make(), LARGE) <= budget + 1e-3, buffers(make(), LARGE)  # + the scalars


def test_the_counterparts_are_counted_as_documented():
  assert buffers(optax.adam(1e-3), LARGE) == pytest.approx(2.0, abs=1e-3)
  assert buffers(optax.sgd(0.1, 0.9, nesterov=True), LARGE) == pytest.approx(1.0, abs=1e-3)


def test_the_full_precision_settings_cost_what_they_say():
  # Adam's two float32 moments, the full-size estimate (2) and a float32 average: 5 buffers.
  full = nag_optax.auto_nadamw(mu_dtype=None, average_dtype=None, subsample=1)
  assert buffers(full, LARGE) == pytest.approx(5.0, abs=0.01)
  assert buffers(nag_optax.auto_nadamw(average_power=None), LARGE) == pytest.approx(1.625, abs=0.01)


@pytest.mark.parametrize("name", ["auto_nadamw", "auto_nag_sgd"])
def test_a_small_cnns_state_has_few_leaves_beyond_its_counterparts(name):
  tx = {"auto_nadamw": nag_optax.auto_nadamw, "auto_nag_sgd": nag_optax.auto_nag_sgd}[name]()
  counterpart = optax.adamw(1e-3) if name == "auto_nadamw" else optax.sgd(0.1, 0.9, nesterov=True)
  # Per parameter leaf: the counterpart's buffers, plus the average's offset and the two
  # subsampled estimate buffers; the rest are scalars.
  per_leaf = leaves(tx, CNN) - leaves(counterpart, CNN)
  assert per_leaf <= 3 * 8 + 40, (leaves(tx, CNN), leaves(counterpart, CNN))
