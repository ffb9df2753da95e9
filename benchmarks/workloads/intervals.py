"""Seed noise: bootstrap intervals over seeds, and the binomial standard error of an accuracy
(NumPy only, no JAX).

A steps-to-target ratio or a score measured on a handful of seeds moves with the seeds. Every one
the suite reports comes with a percentile bootstrap interval: each method's seeds are resampled
with replacement, independently of every other method's, ``RESAMPLES`` times from a fixed RNG
seed; the statistic is recomputed on every resample, and the interval runs from the
``(1 - LEVEL) / 2`` to the ``(1 + LEVEL) / 2`` quantile of those values (the empirical
distribution's quantile, without interpolation, so that a miss, an infinite number of steps,
stays a miss). The target setter's resampled seeds also set the resample's target (the median of
their best validation metrics, as ``algoperf.target``), so an interval carries the target's own
seed noise too; which baseline sets the target is kept fixed.
"""

import math
import zlib
from typing import Callable
from typing import Mapping
from typing import Optional
from typing import Sequence

import numpy as np
import numpy.typing as npt

from benchmarks.workloads import algoperf

LEVEL = 0.95
RESAMPLES = 4000
SEED = 0


def rng_for(name: str) -> np.random.Generator:
  """A fixed generator per workload: the same draws on every run, independent across workloads."""
  return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
  """(resamples, n) indices into n seeds, drawn uniformly with replacement."""
  return rng.integers(0, n, size=(resamples, n))


def percentile_interval(draws: npt.ArrayLike, level: float = LEVEL) -> list:
  """[low, high]: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``draws`` (the
  inverse of their empirical distribution function, no interpolation; inf stays inf)."""
  q = np.quantile(
    np.asarray(draws, float), [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf"
  )
  return [float(q[0]), float(q[1])]


def bootstrap(
  statistic: Callable[..., np.ndarray],
  samples: Sequence[Sequence[float]],
  *,
  resamples: int = RESAMPLES,
  level: float = LEVEL,
  rng: Optional[np.random.Generator] = None,
) -> list:
  """The percentile bootstrap interval of ``statistic(*samples)``, each sample resampled with
  replacement independently of the others.

  ``statistic`` is vectorised: it maps one array per sample, of shape (resamples, its size), to
  the (resamples,) values of the statistic, e.g. ``lambda a, b: np.median(a, 1) / np.median(b,
  1)`` for a ratio of medians.
  """
  rng = rng or np.random.default_rng(SEED)
  arrays = [np.asarray(s, float) for s in samples]
  draws = statistic(*(a[resample_indices(len(a), resamples, rng)] for a in arrays))
  return percentile_interval(draws, level)


def ratio(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> np.ndarray:
  """Steps over steps, elementwise; inf where either is a miss (as ``algoperf.ratios``)."""
  num, den = np.asarray(numerator, float), np.asarray(denominator, float)
  ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
  return np.where(ok, num / np.where(ok, den, 1.0), math.inf)


def steps_to_targets(
  curves: Sequence[algoperf.Curve] | np.ndarray,
  targets: npt.ArrayLike,
  eval_every: int,
  higher_is_better: bool,
  cap: float = math.inf,
) -> np.ndarray:
  """(seeds, targets): ``algoperf.steps_to_target`` of every curve for every target at once; a
  hit beyond ``cap`` steps is a miss (inf)."""
  sign = 1.0 if higher_is_better else -1.0
  values = sign * np.asarray(curves, float)
  # The best value so far, NaN never good: the first evaluation that reaches a target is the
  # first at which this non-decreasing sequence does.
  best_so_far = np.maximum.accumulate(np.where(np.isfinite(values), values, -np.inf), axis=-1)
  wanted = sign * np.asarray(targets, float)
  out = np.empty((best_so_far.shape[0], wanted.size))
  for seed, row in enumerate(best_so_far):
    first = np.searchsorted(row, wanted, side="left")
    out[seed] = np.where(first < row.size, (first + 1.0) * eval_every, math.inf)
  out[out > cap] = math.inf
  return out


def median_steps_draws(
  curves: Mapping[str, Sequence[algoperf.Curve] | np.ndarray],
  setter: str,
  eval_every: int,
  higher_is_better: bool,
  caps: Optional[Mapping[str, float]] = None,
  *,
  resamples: int = RESAMPLES,
  rng: Optional[np.random.Generator] = None,
) -> dict[str, np.ndarray]:
  """{method: (resamples,) median steps to the target} on one workload, from every method's
  per-seed validation curves (``curves``; ``setter``'s set the target).

  On each resample the target setter's seeds are drawn with replacement and set the target (the
  median of their best metrics, a diverged seed counting as worst, as ``algoperf.median_best``);
  every other method's seeds are drawn independently, and its steps are the median over them of
  each seed's steps to that target (beyond its ``caps`` entry: a miss).
  """
  rng = rng or np.random.default_rng(SEED)
  caps = caps or {}
  worst = -math.inf if higher_is_better else math.inf
  setter_bests = [algoperf.best_of_run(c, higher_is_better) for c in curves[setter]]
  setter_bests = np.array([b if np.isfinite(b) else worst for b in setter_bests])
  setter_idx = resample_indices(len(setter_bests), resamples, rng)
  targets = np.median(setter_bests[setter_idx], axis=1)
  draws = {}
  for name in [setter] + [n for n in curves if n != setter]:
    method_curves = np.asarray(curves[name], float)
    steps = steps_to_targets(
      method_curves, targets, eval_every, higher_is_better, caps.get(name, math.inf)
    )
    idx = setter_idx if name == setter else resample_indices(len(steps), resamples, rng)
    draws[name] = np.median(steps[idx, np.arange(resamples)[:, None]], axis=1)
  return {n: draws[n] for n in curves}


def algoperf_draws(
  draws: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
  """From {workload: {method: (resamples,) median steps}}: every resample's time-to-target
  ratios {method: {workload: (resamples,)}} and scores {method: (resamples,)}, by
  ``algoperf.ratios`` and ``algoperf.score`` on each resample."""
  workloads = list(draws)
  methods = list(dict.fromkeys(m for per in draws.values() for m in per))
  resamples = len(next(iter(next(iter(draws.values())).values())))
  ratios = {m: {w: np.empty(resamples) for w in workloads} for m in methods}
  scores = {m: np.empty(resamples) for m in methods}
  for r in range(resamples):
    steps = {m: {w: float(draws[w][m][r]) for w in workloads if m in draws[w]} for m in methods}
    ratios_r = algoperf.ratios(steps)
    for m in methods:
      for w in workloads:
        ratios[m][w][r] = ratios_r[m][w]
      scores[m][r] = algoperf.score(ratios_r[m])
  return ratios, scores


def binomial_standard_error(accuracy: float, samples: int) -> float:
  """sqrt(p (1 - p) / n): the standard error of an accuracy p measured on n samples."""
  if not (np.isfinite(accuracy) and samples > 0):
    return math.nan
  p = min(max(accuracy, 0.0), 1.0)
  return math.sqrt(p * (1.0 - p) / samples)
