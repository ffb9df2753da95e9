"""anneal_after_progress: the plateau annealing held until the loss has started to fall."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax


def _windows_until_progress(losses, drop, window):
  """Reference: the 1-based update at which the windowed mean loss first falls ``drop`` below
  the first window's mean (None if never)."""
  losses = np.asarray(losses, np.float64)
  first = None
  for j in range(len(losses) // window):
    mean = losses[j * window : (j + 1) * window].mean()
    if first is None:
      first = mean
    elif mean <= first - drop * abs(first):
      return (j + 1) * window
  return None


def _scales_fed(tx, losses):
  """The scale ``tx.update`` returns after each loss of ``losses``, and the final state."""

  def step(state, v):
    scale, state = tx.update(jnp.ones(()), state, value=v)
    return state, scale

  run = jax.jit(lambda vs: jax.lax.scan(step, tx.init(jnp.ones(())), vs))
  state, scales = run(jnp.asarray(losses, jnp.float32))
  return np.asarray(scales), state


def test_anneal_after_progress_is_the_plateau_fed_from_the_progress_on():
  rng = np.random.default_rng(0)
  # Flat (with noise) for 300 updates, then falling, then flat again at the bottom.
  losses = np.concatenate(
    [2.3 + 0.01 * rng.standard_normal(300), np.linspace(2.3, 0.5, 200), np.full(400, 0.5)]
  )
  inner = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, accumulation_size=10)
  tx = nag_optax.anneal_after_progress(inner, drop=0.1, window=20)
  start = _windows_until_progress(losses, 0.1, 20)
  assert start is not None and 300 < start < 500
  # Both fed update by update in one jitted scan (an eager loop took minutes).
  scales, state = _scales_fed(tx, losses)
  # The reference: the plateau alone, fed only the losses from the progress update on.
  ref, _ = _scales_fed(inner, losses[start - 1 :])
  np.testing.assert_array_equal(scales[: start - 1], 1.0)
  np.testing.assert_allclose(scales[start - 1 :], ref)
  assert ref.min() < 1.0  # the flat end is annealed once the run has made progress
  assert bool(state.progressed)


def test_anneal_after_progress_rejects_bad_arguments():
  plateau = optax.contrib.reduce_on_plateau()
  with pytest.raises(ValueError, match="drop"):
    nag_optax.anneal_after_progress(plateau, drop=1.0)
  with pytest.raises(ValueError, match="drop"):
    nag_optax.anneal_after_progress(plateau, drop=0.0)
  with pytest.raises(ValueError, match="window"):
    nag_optax.anneal_after_progress(plateau, window=0)
  with pytest.raises(TypeError, match="plateau"):
    nag_optax.anneal_after_progress(None)
  with pytest.raises(TypeError, match="plateau"):
    nag_optax.anneal_after_progress(0.5)
  tx = nag_optax.anneal_after_progress(plateau)
  with pytest.raises(ValueError, match="value"):
    tx.update(jnp.ones(()), tx.init(jnp.ones(())))
