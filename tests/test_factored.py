"""scale_by_factored_nadam: Adam's Nesterov direction with Adafactor's factored second moment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nag_optax._src import factored


def _run(tx, grads):
  state = tx.init(jax.tree.map(jnp.zeros_like, grads[0]))
  for g in grads:
    updates, state = tx.update(g, state)
  return updates, state


def test_a_rank_one_squared_gradient_gives_adams_direction():
  # g^2 = a b^T exactly: the factored moment R C^T / mean(R) equals Adam's per-coordinate one.
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.5, 2.0, 200), rng.uniform(0.5, 2.0, 300)
  g = {"w": jnp.asarray(np.sqrt(np.outer(a, b)), jnp.float32), "b": jnp.ones(300)}
  ours, _ = _run(factored.scale_by_factored_nadam(mu_dtype=jnp.float32), [g] * 3)
  adam, _ = _run(optax.scale_by_adam(nesterov=True), [g] * 3)
  np.testing.assert_allclose(ours["w"], adam["w"], rtol=1e-5)
  np.testing.assert_allclose(ours["b"], adam["b"], rtol=1e-6)


def test_small_leaves_keep_adams_moment_and_large_ones_keep_two_vectors():
  rng = np.random.default_rng(1)
  shapes = {"w": (256, 384), "conv": (3, 3, 16, 32), "b": (384,)}
  grads = [
    {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    for _ in range(4)
  ]
  ours, state = _run(factored.scale_by_factored_nadam(mu_dtype=jnp.float32), grads)
  adam, _ = _run(optax.scale_by_adam(nesterov=True), grads)
  for small in ("conv", "b"):  # not factored: exactly Adam
    np.testing.assert_allclose(ours[small], adam[small], rtol=1e-6)
  assert state.nu_row["w"].shape == (256,) and state.nu_col["w"].shape == (384,)
  assert state.nu["w"].shape == (1,)
  # Random gradients are not rank one: close to Adam's scale, not equal.
  ratio = float(jnp.mean(jnp.abs(ours["w"])) / jnp.mean(jnp.abs(adam["w"])))
  assert 0.8 < ratio < 1.25


@pytest.mark.parametrize(
  "shape,expected", [((200, 300), (0, 1)), ((300, 200), (1, 0)), ((64, 512), None), ((512,), None)]
)
def test_factored_axes_are_the_two_longest_when_both_are_long(shape, expected):
  assert factored.factored_axes(shape) == expected
