"""Plumbing of the workloads suite: corpus pinning, the roster, the stopping-signal table, and
~10-step training smoke runs. Runs in seconds."""

import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nag_optax
from benchmarks.workloads import algoperf
from benchmarks.workloads import data
from benchmarks.workloads import intervals
from benchmarks.workloads import pool
from benchmarks.workloads import render
from benchmarks.workloads import roster
from benchmarks.workloads import suite
from benchmarks.workloads import trainer
from benchmarks.workloads import training


def _tiny_stdlib(tmp_path):
  for rel, text in {
    "b.py": "b = 2\n",
    "a.py": "a = 1\n",
    "pkg/c.py": "c = 3\n",
    "test/t.py": "t\n",
    "pkg/tests/u.py": "u\n",
    "site-packages/s.py": "s\n",
    "notes.txt": "x\n",
  }.items():
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return str(tmp_path)


def test_corpus_file_list_is_sorted_and_excludes_tests(tmp_path):
  root = _tiny_stdlib(tmp_path)
  assert data.stdlib_files(root) == ["a.py", "b.py", "pkg/c.py"]
  assert data.stdlib_files(root) == data.stdlib_files(root)


def test_corpus_sha_is_hashlib_sha_of_the_concatenation(tmp_path):
  root = _tiny_stdlib(tmp_path)
  corpus, sha, files = data.build_corpus(root, num_chars=10)
  assert corpus == b"a = 1\nb = 2\nc = 3\n"[:10]
  assert sha == hashlib.sha256(b"a = 1\nb = 2\nc = 3\n"[:10]).hexdigest()
  assert files == 2
  full, _, files = data.build_corpus(root, num_chars=1000)
  assert full == b"a = 1\nb = 2\nc = 3\n" and files == 3


def test_real_stdlib_file_list_is_deterministic():
  files = data.stdlib_files()
  assert files == sorted(files) and files
  assert not any(part in data.CORPUS_EXCLUDED_DIRS for f in files for part in f.split("/")[:-1])


@pytest.mark.parametrize("name", ["digits_mlp", "stdlib_lm"])
def test_trainer_smoke(name):
  wl = roster.WORKLOADS[name]()
  _, params = wl.init_params(0)
  blocks, every = 2, 5
  batches = jnp.asarray(wl.batch_indices(0, blocks * every))
  with jax.enable_x64(False):
    train = jax.jit(
      trainer.make_trainer(
        wl,
        lambda lr: nag_optax.stop_when(optax.sgd(lr), patience=3),
        blocks,
        every,
        record_stop=True,
        pass_validation_loss=True,
      )
    )
    out = jax.device_get(train(params, batches, jnp.float32(0.1)))
  assert set(out) == {"metric", "val_loss", "train_loss", "train_loss_eval", "lr", "stop"}
  for key in ("metric", "val_loss", "train_loss"):
    assert out[key].shape == (blocks,) and np.isfinite(out[key]).all()
  assert out["train_loss_eval"].shape == () and np.isfinite(out["train_loss_eval"])
  assert out["stop"].shape == () and out["stop"] >= -1
  if name == "stdlib_lm":
    assert 0 < out["metric"][-1] < 8.5  # bits per character of a byte model near its start
  else:
    assert 0 <= out["metric"][-1] <= 1


def test_suite_lists_the_nag_optax_optimizers():
  names = list(roster.nag_factories())
  assert names == [roster.AUTO_SGD, roster.AUTO_NADAMW]
  assert set(roster.STOP_CONFIGS) == set(names)
  assert all(roster.STOP_READS_VALIDATION.values())
  rows = [m.name for m in roster.all_methods() if m.kind == "nag_optax"]
  assert rows == names


def test_the_tuning_free_factories_are_called_with_keywords_only():
  def factory(*, initial_learning_rate=1e-6):
    return optax.sgd(initial_learning_rate)

  roster.at_defaults(factory)
  roster.at_defaults(factory, 0.1)
  for make in roster.long_run_methods().values():
    make()


def test_the_pool_balances_the_workloads_heaviest_first():
  names = list(roster.SETTINGS["full"]["budgets"])
  assert pool.plan(names, 1) == [sorted(names, key=lambda w: -roster.RELATIVE_COST[w])]
  two = pool.plan(names, 2)
  assert sorted(sum(two, [])) == sorted(names)
  assert two[0][0] == "stdlib_lm" and two[1][0] == "mnist1d_resnet"
  # The LM and the digits CNN on one core, the two MNIST-1D workloads on the other.
  assert set(two[1]) == {"mnist1d_resnet", "mnist1d_cnn"}


def test_stop_table_warns_when_the_reference_lane_stopped():
  seed = algoperf.stop_outcome([0.5, 0.8, 0.8], 20, [0.5, 0.8, 0.9], 10, True)
  entry = dict(patience=30, reads_validation_loss=True, per_seed=[seed], wall_s=1.0)
  clean = render.stop_rows({"a": dict(entry, reference_never_stopped=True)})
  assert "| a | yes | 20 | 30 | 0.67 | 11.11% |" in clean
  assert not any("Warning" in line for line in clean)
  flagged = render.stop_rows(
    {
      "a": dict(entry, reference_never_stopped=True),
      "b": dict(entry, reference_never_stopped=False),
    }
  )
  warnings = [line for line in flagged if "Warning" in line]
  assert len(warnings) == 1 and "for b:" in warnings[0] and "a," not in warnings[0]


def test_trainer_evaluates_an_iterate_average_by_default():
  wl = roster.WORKLOADS["digits_mlp"]()
  _, params = wl.init_params(0)
  blocks, every = 2, 10
  batches = jnp.asarray(wl.batch_indices(0, blocks * every))
  make = lambda lr: nag_optax.average_iterates(optax.sgd(lr), power=0.0)

  def run(**kwargs):
    train = jax.jit(trainer.make_trainer(wl, make, blocks, every, **kwargs))
    return jax.device_get(train(params, batches, jnp.float32(0.1)))

  with jax.enable_x64(False):
    default = run()
    averaged = run(eval_params=lambda p, s: nag_optax.averaged_params(s, p))
    raw = run(eval_params=lambda p, s: p)
  for key in ("val_loss", "train_loss_eval", "train_loss"):
    np.testing.assert_array_equal(default[key], averaged[key])
  assert np.all(default["val_loss"] != raw["val_loss"])
  assert np.all(default["train_loss_eval"] != raw["train_loss_eval"])
  np.testing.assert_array_equal(default["train_loss"], raw["train_loss"])  # training params


def test_mnist1d_splits_have_thousands_of_validation_and_test_samples():
  splits = data.load_mnist1d_splits()
  sizes = {k: len(y) for k, (_, y) in splits.items()}
  assert sizes == dict(
    train=data.MNIST1D_TRAIN, validation=data.MNIST1D_VALIDATION, test=data.MNIST1D_TEST
  )
  assert sizes["validation"] >= 4000 and sizes["test"] >= 4000
  assert all(set(np.unique(y)) == set(range(10)) for _, y in splits.values())
  assert splits["train"][0].shape[1:] == (40, 1)
  # No sample is in two splits.
  rows = [tuple(x.ravel()) for _, (xs, _) in splits.items() for x in xs]
  assert len(set(rows)) == len(rows)


def test_evaluation_in_chunks_is_the_whole_splits_accuracy():
  wl = roster.WORKLOADS["digits_mlp"]()
  graphdef, params = wl.init_params(0)
  x, y = wl.arrays("validation")
  assert y is not None
  xs, ys, weights = trainer.in_chunks(x, y)
  assert xs.shape[0] * xs.shape[1] >= len(y) and float(weights.sum()) == len(y)
  assert ys is not None and xs.shape[1] <= trainer.EVAL_CHUNK
  batches = jnp.asarray(wl.batch_indices(0, 2))
  with jax.enable_x64(False):
    train = jax.jit(trainer.make_trainer(wl, lambda h: optax.sgd(0.0), 1, 2))
    out = jax.device_get(train(params, batches, jnp.float32(0.0)))
    logits = nnx.merge(graphdef, params)(x)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y))
  loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
  assert out["metric"][0] == pytest.approx(accuracy, abs=1e-6)
  assert out["val_loss"][0] == pytest.approx(loss, rel=1e-5)


def test_full_mode_runs_five_seeds_for_the_target_setters_and_nag_optax():
  full = roster.SETTINGS["full"]
  assert roster.seeds_of("baseline", full) >= 5 and roster.seeds_of("nag_optax", full) >= 5
  assert roster.seeds_of("peer", full) == full["peer_seeds"] >= 3
  assert full["grid_seeds"] <= full["seeds"]
  # Odd: the target setter's median best is one of its seeds', reached by at least half of them.
  assert all(settings["seeds"] % 2 == 1 for settings in roster.SETTINGS.values())
  for settings in roster.SETTINGS.values():
    assert roster.most_seeds(settings) == max(
      settings[k] for k in ("seeds", "grid_seeds", "peer_seeds", "check_seeds")
    )


def test_setup_take_keeps_the_first_seeds():
  wl = roster.WORKLOADS["digits_mlp"]()
  setup = trainer.prepare(wl, 20, 2, range(3))
  two = setup.take(2)
  assert two.seeds == (0, 1) and two.batches.shape[0] == 2
  np.testing.assert_array_equal(two.batches, setup.batches[:2])
  for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(setup.params)):
    np.testing.assert_array_equal(a, b[:2])


def test_the_stop_check_passes_its_patience_and_options(monkeypatch):
  seen = {}

  def factory(*, validation_patience=None, validation_min_delta=None):
    seen.update(patience=validation_patience, min_delta=validation_min_delta)
    return optax.sgd(0.1)

  monkeypatch.setattr(roster, "STOP_OPTIONS", {"validation_min_delta": 1e-3})
  make, keyword = roster._stop_config(factory)
  make(jnp.float32(300.0))
  assert keyword == "validation_patience"
  assert seen["patience"].dtype == jnp.int32 and int(seen["patience"]) == 300
  assert seen["min_delta"] == 1e-3
  assert roster.stop_lanes(1000, 25, 1500) == (100, 1501)  # a tenth of B
  assert roster.stop_lanes(20, 10, 30) == (10, 31)  # at least one evaluation interval


def test_a_baseline_reruns_its_chosen_rate_on_more_seeds():
  wl = roster.WORKLOADS["digits_mlp"]()
  settings = dict(seeds=2, grid_seeds=1, peer_seeds=1, grid="short")
  setup = trainer.prepare(wl, 20, 2, range(2))
  method = next(m for m in roster.all_methods() if m.kind == "baseline")
  with jax.enable_x64(False):
    entry = training.train_method(setup, method, settings, "smoke", trainer.Timer())
  assert len(entry["values"]) == len(roster.ADAM_GRID["short"])
  assert all(len(v["metric_curves"]) == 1 for v in entry["values"])
  assert entry["seeds"] == 2 and len(entry["reported"]["metric_curves"]) == 2
  assert entry["lr"] == roster.ADAM_GRID["short"][entry["best"]]
  # Seed 0 at the chosen rate: the same run in the search and in the rerun.
  np.testing.assert_allclose(
    entry["reported"]["metric_curves"][0],
    entry["values"][entry["best"]]["metric_curves"][0],
    atol=1.5 / 359,
  )


def _hand_made_workload() -> dict:
  """A workload's result as ``training.run_workload`` returns it, without training: the
  target setter (3 seeds) and one method (3 seeds), evaluation every 10 steps."""
  curves = {
    "setter": [[0.8, 0.8, 0.8], [0.5, 0.9, 0.9], [0.5, 0.5, 1.0]],
    "method": [[0.9, 0.9, 1.0], [0.5, 0.8, 1.0], [0.5, 0.95, 0.95]],
  }
  kinds = {"setter": "baseline", "method": "nag_optax"}
  methods: dict[str, dict[str, Any]] = {
    n: dict(kind=kinds[n], reported=dict(metric_curves=c, lr_curve=None), cap=math.inf)
    for n, c in curves.items()
  }
  res: dict[str, Any] = dict(
    methods=methods, eval_every=10, higher_is_better=True, target_set_by="setter"
  )
  res["target"] = algoperf.median_best(curves["setter"], True)
  for e in methods.values():
    e["per_seed_steps"] = [
      algoperf.steps_to_target(c, res["target"], 10, True) for c in e["reported"]["metric_curves"]
    ]
    e["steps_to_target"] = float(np.median(e["per_seed_steps"]))
  return res


def test_ratios_and_scores_carry_their_intervals_into_the_tables():
  res = _hand_made_workload()
  # Target 0.9: the setter reaches it at -, 20, 30 (median 30), the method at 10, 30, 20 (20).
  assert res["target"] == 0.9
  draws = training.steps_draws(res, "w")
  assert set(draws) == {"setter", "method"} and len(draws["method"]) == intervals.RESAMPLES
  agg = suite.aggregate({"w": res})
  assert agg["ratios"]["method"]["w"] == 1.0 and agg["ratios"]["setter"]["w"] == 1.5
  low, high = agg["ratio_intervals"]["setter"]["w"]
  assert low <= 1.5 <= high
  low, high = agg["score_intervals"]["method"]
  assert 0.0 <= low <= agg["scores"]["method"] == 1.0 == high
  assert render.with_interval(1.14, [0.98, 1.31]) == "1.14 [0.98, 1.31]"
  assert render.with_interval(math.inf, [1.2, math.inf]) == "- [1.20, -]"
  assert render.with_interval(0.5, None) == "0.50"
  assert render.with_interval(math.inf, [math.inf, math.inf]) == "-"
