"""The bootstrap intervals over seeds, against exact enumerations of every resample of 3-seed
cases. Runs in seconds."""

import itertools
import math

import numpy as np
import pytest

from benchmarks.workloads import algoperf
from benchmarks.workloads import intervals

INF = math.inf


def exact_interval(values: list[float], level: float) -> list:
  """The percentile interval of equally likely ``values``: every resample, enumerated."""
  return intervals.percentile_interval(values, level)


def test_the_median_of_three_resampled_seeds():
  # By hand: the median of 3 draws from (a, b, c) is a when a is drawn at least twice,
  # 3 (1/3)^2 (2/3) + (1/3)^3 = 7/27, c likewise, b otherwise (13/27).
  medians = [float(np.median(r)) for r in itertools.product((1.0, 2.0, 4.0), repeat=3)]
  assert [medians.count(v) for v in (1.0, 2.0, 4.0)] == [7, 13, 7]


def test_bootstrap_of_a_ratio_of_medians_matches_the_enumeration_of_every_resample():
  method, setter = (100.0, 200.0, 400.0), (100.0, 150.0, 300.0)
  # Exact: 27 x 27 equally likely resamples. By hand, from the medians' 7/13/7 weights: ratio
  # 1/3 with probability 49/729 (6.7%), 2/3 with 182/729 (cumulative 31.7%), 1 (38.4%),
  # 4/3 (68.3%), 2 (80.8%), 8/3 (93.3%), 4: the 95% interval is [1/3, 4], the 50% one [2/3, 2].
  ratios = [
    float(np.median(m) / np.median(s))
    for m in itertools.product(method, repeat=3)
    for s in itertools.product(setter, repeat=3)
  ]
  assert exact_interval(ratios, 0.95) == pytest.approx([1 / 3, 4.0])
  assert exact_interval(ratios, 0.5) == pytest.approx([2 / 3, 2.0])
  statistic = lambda m, s: np.median(m, 1) / np.median(s, 1)
  for level in (0.95, 0.5):
    got = intervals.bootstrap(statistic, [method, setter], level=level)
    assert got == pytest.approx(exact_interval(ratios, level))
  # A fixed RNG seed: the same interval on every call.
  assert intervals.bootstrap(statistic, [method, setter]) == intervals.bootstrap(
    statistic, [method, setter]
  )


# Three seeds of the target setter (evaluation every 10 steps, accuracy): bests 0.8, 0.9, 1.0.
SETTER = [[0.8, 0.8, 0.8], [0.5, 0.9, 0.9], [0.5, 0.5, 1.0]]
METHOD = [[0.9, 0.9, 1.0], [0.5, 0.8, 1.0], [0.5, 0.95, 0.95]]


def enumerated_draws() -> tuple[list[float], list[float]]:
  """Every resample of the setter's seeds (its target and its steps) and of the method's, with
  algoperf's own functions: the setter's median steps and the method's ratio to them."""
  setter_steps, ratios = [], []
  for rs in itertools.product(range(3), repeat=3):
    target = algoperf.median_best([SETTER[i] for i in rs], True)
    own = float(np.median([algoperf.steps_to_target(SETTER[i], target, 10, True) for i in rs]))
    setter_steps.append(own)
    for rm in itertools.product(range(3), repeat=3):
      steps = [algoperf.steps_to_target(METHOD[i], target, 10, True) for i in rm]
      ratios.append(float(intervals.ratio(float(np.median(steps)), own)))
  return setter_steps, ratios


def test_the_target_moves_with_the_setters_resampled_seeds():
  setter_steps, ratios = enumerated_draws()
  # By hand: two or three draws of the 0.8 seed set the target 0.8, reached by it at 10 (7/27);
  # two or three of the 1.0 seed set 1.0, reached by that seed only, at 30 (7/27); two of the
  # 0.9 seed set 0.9, reached by it at 20 (7/27); one of each sets 0.9: steps (-, 20, 30),
  # median 30 (6/27).
  assert [setter_steps.count(s) for s in (10.0, 20.0, 30.0)] == [7, 7, 13]
  draws = intervals.median_steps_draws({"setter": SETTER, "method": METHOD}, "setter", 10, True)
  counts = [np.mean(draws["setter"] == s) for s in (10.0, 20.0, 30.0)]
  np.testing.assert_allclose(counts, [7 / 27, 7 / 27, 13 / 27], atol=0.03)
  # The ratio's cumulative distribution: 1/3 5.8%, 1/2 12.5%, 2/3 23.2%, 1 67.4%, 3/2 74.1%,
  # 2 93.3%, a miss (inf) 100%: the 95% interval [1/3, inf], the 60% one [2/3, 2].
  assert exact_interval(ratios, 0.95) == [pytest.approx(1 / 3), INF]
  assert exact_interval(ratios, 0.6) == pytest.approx([2 / 3, 2.0])
  sampled = intervals.ratio(draws["method"], draws["setter"])
  for level in (0.95, 0.6):
    assert intervals.percentile_interval(sampled, level) == pytest.approx(
      exact_interval(ratios, level)
    )


def test_without_seed_noise_every_draw_is_the_point_estimate():
  curves = {"setter": [[0.5, 0.9, 0.9]] * 3, "method": [[0.9, 0.9, 0.9]] * 5}
  draws = intervals.median_steps_draws(curves, "setter", 10, True, resamples=50)
  assert set(draws["setter"]) == {20.0} and set(draws["method"]) == {10.0}
  # Lower is better, and a cap turns a late hit into a miss.
  curves = {"setter": [[3.0, 2.0]] * 3, "method": [[3.0, 2.5, 1.9]] * 3}
  draws = intervals.median_steps_draws(curves, "setter", 5, False, {"method": 10}, resamples=20)
  assert set(draws["setter"]) == {10.0} and set(draws["method"]) == {INF}


def test_steps_to_targets_agrees_with_algoperf():
  rng = np.random.default_rng(0)
  curves = rng.uniform(0, 1, (6, 12))
  curves[1, 3] = math.nan
  curves[2, :] = math.nan
  targets = [0.1, 0.5, 0.9, 0.99, 1.5]
  for hib in (True, False):
    got = intervals.steps_to_targets(curves, targets, 7, hib, cap=70)
    for s, curve in enumerate(curves):
      for k, t in enumerate(targets):
        want = algoperf.steps_to_target(curve, t, 7, hib)
        assert got[s, k] == (want if want <= 70 else INF)


def test_algoperf_draws_apply_the_scoring_to_each_resample():
  draws = {
    "w1": {"a": np.array([100.0, 200.0]), "b": np.array([200.0, INF])},
    "w2": {"a": np.array([INF, 50.0]), "b": np.array([50.0, 50.0])},
  }
  ratios, scores = intervals.algoperf_draws(draws)
  for r in range(2):
    steps = {m: {w: float(draws[w][m][r]) for w in draws} for m in ("a", "b")}
    want = algoperf.ratios(steps)
    for m in ("a", "b"):
      assert {w: ratios[m][w][r] for w in draws} == want[m]
      assert scores[m][r] == pytest.approx(algoperf.score(want[m]))
  np.testing.assert_allclose(ratios["a"]["w1"], [1.0, 1.0])
  np.testing.assert_allclose(ratios["b"]["w1"], [2.0, INF])


def test_percentile_interval_keeps_a_miss():
  assert intervals.percentile_interval([1.0, 2.0, INF, INF], 0.5) == [1.0, INF]
  assert intervals.percentile_interval([3.0] * 10) == [3.0, 3.0]


def test_ratio_is_a_miss_where_either_side_is():
  np.testing.assert_array_equal(
    intervals.ratio([100.0, INF, 100.0, 50.0], [50.0, 50.0, INF, 50.0]), [2.0, INF, INF, 1.0]
  )


def test_binomial_standard_error():
  assert intervals.binomial_standard_error(0.98, 4000) == pytest.approx(0.0022136, rel=1e-4)
  assert intervals.binomial_standard_error(0.98, 359) == pytest.approx(0.0073889, rel=1e-4)
  assert intervals.binomial_standard_error(1.0, 359) == 0.0
  assert math.isnan(intervals.binomial_standard_error(math.nan, 359))
