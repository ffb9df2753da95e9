"""The AlgoPerf scoring maths and the stopping-signal replay, on hand-made tables. Runs in
seconds."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from benchmarks.workloads import algoperf

INF = math.inf


def test_target_is_median_best_of_best_baseline():
  # Accuracy (higher is better): per-seed bests of A are 0.9, 0.95, 0.8 -> median 0.9;
  # B's are 0.92, 0.91, 0.5 -> median 0.91; B sets the target.
  baselines = {
    "A": [[0.5, 0.9, 0.85], [0.6, 0.95, 0.7], [0.8, 0.7, 0.75]],
    "B": [[0.92, 0.9, 0.9], [0.91, 0.2, 0.3], [0.5, 0.4, 0.45]],
  }
  value, name = algoperf.target(baselines, higher_is_better=True)
  assert (value, name) == (pytest.approx(0.91), "B")
  # Loss-like metric (lower is better): A's per-seed minima 0.5, 0.7, 0.7 -> 0.7;
  # B's 0.9, 0.2, 0.4 -> 0.4.
  value, name = algoperf.target(baselines, higher_is_better=False)
  assert (value, name) == (pytest.approx(0.4), "B")


def test_target_counts_a_diverged_seed_as_worst():
  baselines = {"A": [[0.9], [math.nan], [0.8]], "B": [[0.7], [0.7], [0.7]]}
  # A's median over (0.9, -inf, 0.8) is 0.8, still above B's 0.7.
  assert algoperf.target(baselines, True) == (pytest.approx(0.8), "A")


def test_steps_to_target_and_misses():
  curve = [0.1, 0.5, 0.97, 0.99]
  assert algoperf.steps_to_target(curve, 0.97, 25, True) == 75
  assert algoperf.steps_to_target(curve, 0.995, 25, True) == INF
  assert algoperf.steps_to_target([3.0, 2.0, 1.5], 2.0, 10, False) == 20
  assert algoperf.steps_to_target([math.nan, 0.99], 0.9, 5, True) == 10
  curves = [[0.1, 0.97], [0.97, 0.99], [0.1, 0.2]]  # 50, 25, miss -> median 50
  assert algoperf.median_steps(curves, 0.97, 25, True) == 50
  # Two misses out of three -> the median is a miss.
  assert algoperf.median_steps([[0.1, 0.97], [0.1, 0.1], [0.1, 0.1]], 0.97, 25, True) == INF
  # A hit beyond the allowed steps is a miss.
  assert algoperf.median_steps([[0.1, 0.97]], 0.97, 25, True, max_steps=25) == INF


def test_ratios_profile_and_score_on_a_hand_made_table():
  steps = {
    "fast": {"w1": 100, "w2": 50},
    "half": {"w1": 200, "w2": 100},
    "mixed": {"w1": 100, "w2": INF},
    "never": {"w1": INF, "w2": INF},
    "slow": {"w1": 500, "w2": 250},
  }
  r = algoperf.ratios(steps)
  assert r["fast"] == {"w1": 1.0, "w2": 1.0}
  assert r["half"] == {"w1": 2.0, "w2": 2.0}
  assert r["mixed"] == {"w1": 1.0, "w2": INF}
  assert algoperf.score(r["fast"]) == pytest.approx(1.0)
  # rho = 0 on [1, 2), 1 on [2, 4]: area 2 / 3.
  assert algoperf.score(r["half"]) == pytest.approx(2 / 3)
  # A miss contributes 0: half the workloads at ratio 1.
  assert algoperf.score(r["mixed"]) == pytest.approx(0.5)
  assert algoperf.score(r["never"]) == 0.0
  assert algoperf.score(r["slow"]) == 0.0  # 5x: beyond tau = 4
  taus = [1.0, 1.5, 2.0, 4.0]
  np.testing.assert_allclose(algoperf.profile(r["half"], taus), [0, 0, 1, 1])
  np.testing.assert_allclose(algoperf.profile(r["mixed"], taus), [0.5, 0.5, 0.5, 0.5])
  # The exact area agrees with a fine Riemann sum of the profile.
  grid = np.linspace(1, 4, 30001)
  for method in steps:
    riemann = np.trapezoid(algoperf.profile(r[method], grid), grid) / 3
    assert algoperf.score(r[method]) == pytest.approx(riemann, abs=1e-3)


def test_a_workload_nobody_reached_is_a_miss_for_everyone():
  r = algoperf.ratios({"a": {"w": INF}, "b": {"w": INF}})
  assert r == {"a": {"w": INF}, "b": {"w": INF}}


def test_lr_floor_rule():
  assert algoperf.lr_at_floor([1e-3, 1e-4, 1e-8])  # final at the 1e-8 floor
  assert algoperf.lr_at_floor([1e-1] + [1e-9] * 3 + [2e-8] * 4)  # last quarter < 1e-6 x max
  assert not algoperf.lr_at_floor([1e-3, 1e-2, 5e-3, 1e-3])
  assert not algoperf.lr_at_floor([1e-3] * 8 + [1e-7])  # last quarter's median still 1e-3
  assert not algoperf.lr_at_floor([math.nan] * 4)


def test_relative_loss():
  assert algoperf.relative_loss(0.9, 1.0, True) == pytest.approx(0.1)
  assert algoperf.relative_loss(2.2, 2.0, False) == pytest.approx(0.1)
  assert algoperf.relative_loss(1.0, 1.0, True) == 0.0


def test_stop_outcome_judges_the_stop_against_the_unstopped_run():
  # The stopped run freezes at step 40 (evaluations every 10 steps): its later evaluations repeat
  # the stopped params. The unstopped run keeps improving and peaks at step 80.
  stopped = [0.50, 0.70, 0.80, 0.80, 0.80, 0.80, 0.80, 0.80, 0.80]
  unstopped = [0.50, 0.70, 0.80, 0.82, 0.85, 0.88, 0.90, 0.95, 0.93]
  out = algoperf.stop_outcome(stopped, 40, unstopped, 10, True)
  assert out["best_step"] == 80 and out["best_overall"] == 0.95
  assert out["stop_over_best"] == pytest.approx(0.5)
  assert out["best_at_stop"] == 0.80
  assert out["relative_loss"] == pytest.approx(0.15 / 0.95)
  # Judged against itself (the frozen run) nothing would ever look lost: the flaw this avoids.
  assert algoperf.stop_outcome(stopped, 40, stopped, 10, True)["relative_loss"] == 0.0
  # Never stopped: its whole run counts; lower is better for a loss metric.
  loss = algoperf.stop_outcome([3.0, 2.5, 2.6], None, [3.0, 2.4, 2.6], 5, False)
  assert loss["stop_step"] is None and loss["best_step"] == 10
  assert loss["stop_over_best"] == pytest.approx(1.5)  # the run's end, step 15, over 10
  assert loss["relative_loss"] == pytest.approx(0.1 / 2.4)


@pytest.mark.parametrize(
  "patience,min_delta,ratio",
  [
    (1, 0.0, 0.0),
    (3, 0.0, 0.0),
    (7, 0.0, 0.0),
    (12, 0.0, 0.0),
    (3, 0.05, 0.0),
    (2, 0.0, 0.3),
    (3, 0.05, 0.5),
  ],
)
def test_replayed_validation_stop_matches_stop_when(patience, min_delta, ratio):
  # The replay must fire at the very update where stop_when fires when fed as the workloads'
  # trainer feeds it: the latest validation loss at every update.

  every = 4
  initial = 3.0
  curve = [2.0, 1.5, 1.6, 1.7, 1.4, 1.45, 1.5, 1.55, 1.6, 1.3, 1.35, 1.4, 1.5, 1.6, 1.7, 1.8]
  tx = nag_optax.stop_when(
    optax.sgd(0.1),
    validation_patience=patience,
    validation_min_delta=min_delta,
    validation_patience_ratio=ratio,
  )
  params = jnp.zeros(2)
  state = tx.init(params)
  seen = [initial] + curve
  fired = None
  for t in range(1, (len(seen) - 1) * every + 1):
    _, state = tx.update(jnp.ones(2), state, params, validation_loss=seen[(t - 1) // every])
    if nag_optax.should_stop(state):
      fired = t
      break
  replayed = algoperf.replay_validation_stop(
    curve, every, patience, initial, min_delta=min_delta, patience_ratio=ratio
  )
  assert replayed == fired
  assert fired is not None  # every rule here fires within the run


def test_kept_before_stop_counts_only_earlier_evaluations():
  curve = [0.5, 0.7, 0.9, 0.8]
  assert algoperf.kept_before_stop(curve, 9, 4, True) == 0.7  # evaluations at steps 4 and 8
  assert algoperf.kept_before_stop(curve, 8, 4, True) == 0.5  # the step-8 one comes too late
  assert algoperf.kept_before_stop(curve, None, 4, True) == 0.9


def test_step_of_best_takes_the_first_best_and_ignores_nan():
  assert algoperf.step_of_best([0.5, 0.9, 0.9, math.nan], 10, True) == 20
  assert algoperf.step_of_best([3.0, math.nan, 2.0, 2.5], 5, False) == 15
  assert algoperf.step_of_best([math.nan, math.nan], 5, True) is None
