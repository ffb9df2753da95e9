"""Plumbing of the held-out workloads script: data that the suite never sees, model shapes, and
the table on hand-made curves. Runs in seconds (no training)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.studies import heldout
from benchmarks.workloads import data
from benchmarks.workloads import roster


def test_the_held_out_corpus_is_not_the_suites():
  splits = heldout.held_out_corpus_splits()
  low, high = heldout.HELD_OUT_SLICE
  assert low >= data.CORPUS_CHARS  # the suite trains, validates and tests on the first bytes
  assert sum(len(v) for v in splits.values()) == high - low
  assert len(splits["validation"]) == len(splits["test"]) == (high - low) // 20
  corpus, _, _ = data.build_corpus(num_chars=high)
  np.testing.assert_array_equal(
    splits["train"][:64], np.frombuffer(corpus[low : low + 64], np.uint8)
  )


def test_tabular_splits_are_standardised_on_the_training_split():
  splits = heldout.tabular_splits()
  (x_tr, y_tr), (x_va, _), (x_te, _) = splits["train"], splits["validation"], splits["test"]
  assert x_tr.shape == (8400, 40) and x_va.shape == x_te.shape == (1800, 40)
  assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
  assert set(np.unique(y_tr)) == set(range(8))
  np.testing.assert_allclose(x_tr.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x_tr.std(0), 1.0, atol=1e-4)


def test_models_map_a_batch_to_class_logits():
  rngs = nnx.Rngs(0)
  assert heldout.DeepMLP(rngs)(jnp.zeros((3, 40))).shape == (3, 8)
  gru = heldout.GRUClassifier(rngs)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 40, 1)), jnp.float32)
  out = gru(x)
  assert out.shape == (3, 10)
  # The read-out depends on the whole sequence: changing the first position changes it.
  assert not np.allclose(out, gru(x.at[:, 0, 0].add(1.0)))


def test_budgets_cover_every_workload_and_evaluate_40_times():
  assert set(heldout.BUDGETS) == set(heldout.HELD_OUT)
  assert all(b % heldout.EVALS == 0 for b in heldout.BUDGETS.values())
  assert roster.SELF_TUNING_FACTOR == 1.5


def test_render_reads_the_target_from_the_best_baseline():
  class Fake:
    label, metric, higher_is_better = "fake", "accuracy", True

  every = 10
  curves = {
    "optax.nadamw (tuned)": np.array([[0.5, 0.8, 0.9], [0.5, 0.9, 0.9], [0.5, 0.6, 0.7]]),
    "optax.adamw (tuned)": np.array([[0.5, 0.6, 0.7]] * 3),
    "optax.sgd nesterov 0.9 (tuned)": np.array([[0.5, 0.6, 0.7]] * 3),
    "nag_optax.auto_nadamw()": np.array([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.95], [0.1] * 4]),
    "nag_optax.auto_nag_sgd()": np.array([[0.1] * 4] * 3),
    "optax.contrib.prodigy()": np.array([[0.1] * 4] * 3),
  }
  result = dict(wl=Fake(), curves=curves, best_lr={"optax.nadamw (tuned)": 0.01}, every=every)
  text = heldout.render("fake", 30, result, 1.0)
  # nadamw's per-seed bests 0.9, 0.9, 0.7 -> target 0.9, reached at 30, 20, never: median 30.
  assert "accuracy >= 0.9000 (median best of optax.nadamw (tuned))" in text
  assert "| optax.nadamw (tuned) | 0.01 | 0.9000 | 0.9000 | 30, 20, - | 1.00 |" in text
  # auto_nadamw reaches it at 10 and 40 and misses once: median 40, 40 / 30 = 1.33.
  assert "| nag_optax.auto_nadamw() | — | 0.9000 | 0.9000 | 10, 40, - | 1.33 |" in text
  assert "| nag_optax.auto_nag_sgd() | — | 0.1000 | 0.1000 | -, -, - | - |" in text
