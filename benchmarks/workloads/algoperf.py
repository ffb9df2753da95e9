"""AlgoPerf-style scoring, as small pure functions on plain numbers (NumPy only, no JAX).

The rules (MLCommons AlgoPerf, as used by the ``workloads`` suite):

- A workload's target is the median over seeds of the best validation metric reached during the
  run by the best tuned baseline (each baseline at its best learning rate; the best baseline is
  the one whose median is best).
- A method's steps to the target on one seed are the first evaluation step at which its
  validation metric is at least as good as the target; a seed that never gets there is a miss
  (infinite). The method's steps are the median over seeds.
- Its time-to-target ratio on a workload is its steps / the fewest steps of any method there
  (a miss is infinite). The performance profile rho(tau) is the fraction of workloads with a
  ratio <= tau, and the score is the area under rho over tau in [1, 4], divided by 3: 1.0 means
  the fastest on every workload, 0 means no target reached within 4x of the fastest.
"""

import math
from typing import Iterable
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import numpy as np

# A validation (or learning-rate) curve: one value per evaluation.
Curve = Union[Sequence[float], np.ndarray]

TAU_MAX = 4.0


def better(a: float, b: float, higher_is_better: bool) -> bool:
  """Whether metric ``a`` is at least as good as ``b`` (NaN is never good)."""
  if not np.isfinite(a):
    return False
  return a >= b if higher_is_better else a <= b


def best_of_run(curve: Curve, higher_is_better: bool) -> float:
  """The best value of one validation curve (NaN entries, from a diverged run, are ignored)."""
  values = np.asarray(curve, float)
  values = values[np.isfinite(values)]
  if not values.size:
    return math.nan
  return float(values.max() if higher_is_better else values.min())


def median_best(curves: Iterable[Curve], higher_is_better: bool) -> float:
  """Median over seeds of the best value of each seed's curve (a NaN seed counts as worst)."""
  worst = -math.inf if higher_is_better else math.inf
  bests = [best_of_run(c, higher_is_better) for c in curves]
  return float(np.median([b if np.isfinite(b) else worst for b in bests]))


def target(baselines: Mapping[str, Iterable[Curve]], higher_is_better: bool) -> tuple:
  """(target, name of the baseline that set it) from each tuned baseline's per-seed curves.

  ``baselines`` maps a baseline's name to its curves (one per seed) at its best learning rate.
  """
  medians = {name: median_best(curves, higher_is_better) for name, curves in baselines.items()}
  pick = max if higher_is_better else min
  name = pick(medians, key=lambda n: medians[n])
  return medians[name], name


def steps_to_target(
  curve: Curve, target_value: float, eval_every: int, higher_is_better: bool
) -> float:
  """First evaluation step (``(i + 1) * eval_every``) where the curve reaches the target; inf if
  never."""
  for i, v in enumerate(curve):
    if better(float(v), target_value, higher_is_better):
      return float((i + 1) * eval_every)
  return math.inf


def median_steps(
  curves: Iterable[Curve],
  target_value: float,
  eval_every: int,
  higher_is_better: bool,
  max_steps: Optional[int] = None,
) -> float:
  """Median over seeds of the steps to target; a seed beyond ``max_steps`` is a miss (inf)."""
  steps = []
  for c in curves:
    s = steps_to_target(c, target_value, eval_every, higher_is_better)
    if max_steps is not None and s > max_steps:
      s = math.inf
    steps.append(s)
  return float(np.median(steps))


def ratios(steps: Mapping[str, Mapping[str, float]]) -> dict:
  """{method: {workload: steps / fewest steps on that workload}}; inf for a miss.

  ``steps`` maps method -> workload -> median steps to the target (inf = miss). A workload that
  no method reached gives inf to everyone.
  """
  workloads = list(dict.fromkeys(w for per in steps.values() for w in per))
  fastest = {
    w: min((per.get(w, math.inf) for per in steps.values()), default=math.inf) for w in workloads
  }
  out = {}
  for method, per in steps.items():
    out[method] = {}
    for w in workloads:
      s, f = per.get(w, math.inf), fastest[w]
      out[method][w] = s / f if (math.isfinite(s) and math.isfinite(f) and f > 0) else math.inf
  return out


def profile(method_ratios: Mapping[str, float], taus: Iterable[float]) -> np.ndarray:
  """rho(tau): the fraction of workloads whose ratio is <= tau, at each tau."""
  r = np.asarray(list(method_ratios.values()), float)
  taus = list(taus)
  if not r.size:
    return np.zeros(len(taus))
  return np.array([(r <= t).mean() for t in taus])


def score(method_ratios: Mapping[str, float], tau_max: float = TAU_MAX) -> float:
  """Area under rho on [1, tau_max] / (tau_max - 1), computed exactly (rho is a step function).

  A workload with ratio r in [1, tau_max] adds (tau_max - r) / (tau_max - 1) / n; a miss or a
  ratio above tau_max adds 0.
  """
  r = np.asarray(list(method_ratios.values()), float)
  if not r.size:
    return 0.0
  r = np.maximum(r, 1.0)
  contrib = np.where(r <= tau_max, (tau_max - r) / (tau_max - 1.0), 0.0)
  return float(contrib.mean())


# A learning rate "at its lower bound at the end", the failure of a rate that collapses over a long
# run: the last recorded rate <= FLOOR_ABS (an absolute floor of 1e-8), or the median rate over the
# last quarter of the run below FLOOR_REL x the largest rate of the run.
FLOOR_ABS = 1.01e-8
FLOOR_REL = 1e-6
FLOOR_RULE = (
  f"final lr <= {FLOOR_ABS:g}, or median lr over the last quarter of the run "
  f"< {FLOOR_REL:g} x the run's largest lr"
)


def lr_at_floor(lr_curve: Curve) -> bool:
  """Whether a learning-rate trajectory ends at its lower bound (the rule in ``FLOOR_RULE``)."""
  lr = np.asarray(lr_curve, float)
  lr = lr[np.isfinite(lr)]
  if not lr.size:
    return False
  if lr[-1] <= FLOOR_ABS:
    return True
  last = lr[-max(1, len(lr) // 4) :]
  return bool(np.median(last) < FLOOR_REL * lr.max())


def relative_loss(best_at_stop: float, best_overall: float, higher_is_better: bool) -> float:
  """How much worse ``best_at_stop`` is than ``best_overall``, relative (0 = nothing lost)."""
  if not (np.isfinite(best_at_stop) and np.isfinite(best_overall)) or best_overall == 0:
    return math.nan
  gap = (best_overall - best_at_stop) if higher_is_better else (best_at_stop - best_overall)
  return float(gap / abs(best_overall))


def step_of_best(curve: Curve, eval_every: int, higher_is_better: bool) -> Optional[int]:
  """The step of the first evaluation with the best metric (NaN ignored; None if all NaN)."""
  values = np.asarray(curve, float)
  finite = np.isfinite(values)
  if not finite.any():
    return None
  masked = np.where(finite, values, -np.inf if higher_is_better else np.inf)
  return (int(np.argmax(masked) if higher_is_better else np.argmin(masked)) + 1) * eval_every


def stop_outcome(
  stopped_curve: Curve,
  stop_step: Optional[int],
  reference_curve: Curve,
  eval_every: int,
  higher_is_better: bool,
) -> dict:
  """What stopping cost, judged against the same optimizer run without stopping.

  ``stopped_curve`` is the validation curve of the run with its stopping criteria on (its params
  freeze at ``stop_step``, so every later evaluation repeats the stopped params: its own best can
  never lie after the stop, and comparing the run with itself would always show nothing lost);
  ``reference_curve`` is the unstopped run's (same seeds, batches and optimizer). The best step
  and the best metric come from the reference; the metric kept is the best of the stopped run up
  to the first evaluation at or after the stop. ``stop_step`` None: it never stopped, and its
  stop counts as the end of the run. ``stop_over_best``: the stop step over the best step (a stop
  within 10% of the best step gives 0.9 to 1.1).
  """
  ref = np.asarray(reference_curve, float)
  best_step = step_of_best(ref, eval_every, higher_is_better)
  best_overall = best_of_run(ref, higher_is_better)
  upto = stopped_curve[: -(-stop_step // eval_every)] if stop_step else stopped_curve
  best_at_stop = best_of_run(upto, higher_is_better)
  end_step = len(ref) * eval_every
  return dict(
    stop_step=stop_step,
    best_step=best_step,
    stop_over_best=(stop_step or end_step) / best_step if best_step else None,
    best_overall=best_overall,
    best_at_stop=best_at_stop,
    relative_loss=relative_loss(best_at_stop, best_overall, higher_is_better),
  )


# stop_when's floor on the scale of validation_min_delta, a fraction of the first validation loss.
SATURATED_FRACTION = 0.01


def replay_validation_stop(
  validation_curve: Curve,
  eval_every: int,
  patience: int,
  initial: float = math.inf,
  *,
  min_delta: float = 0.0,
  patience_ratio: float = 0.0,
) -> Optional[int]:
  """The step at which ``stop_when(validation_patience=patience, validation_min_delta=min_delta,
  validation_patience_ratio=patience_ratio)`` would fire, replayed offline.

  As the workloads' trainer feeds it: every update passes the latest measured validation loss,
  ``initial`` (measured before training) during the first block and ``validation_curve[j]``
  (after block ``j + 1``) during block ``j + 2``. An update whose finite loss is below the best
  by at least ``min_delta`` of it (of 1% of the first loss, where that is larger) sets a new best
  (and the update count at it) and resets the count of updates without one; the stop fires at
  the update whose count reaches
  ``max(patience, patience_ratio * count at the best)`` (the trainer's recorded stop step). None:
  it would not fire within the curve.
  """
  seen = [initial] + list(np.asarray(validation_curve, float))
  best, since, best_step, first = math.inf, 0, 0, math.inf
  for block in range(len(seen) - 1):  # the last value arrives after the run's final update
    value = seen[block]
    for k in range(eval_every):
      update = block * eval_every + k  # updates applied before this one
      if not math.isfinite(first) and math.isfinite(value):
        first = value
      scale = max(abs(best), SATURATED_FRACTION * abs(first)) if math.isfinite(first) else 0.0
      margin = min_delta * scale if math.isfinite(best) else 0.0
      if math.isfinite(value) and value < best - margin:
        best, since, best_step = value, 0, update
      else:
        since += 1
      if since >= max(patience, patience_ratio * best_step):
        return update + 1
  return None


def kept_before_stop(
  curve: Curve, stop_step: Optional[int], eval_every: int, higher_is_better: bool
) -> float:
  """The best of the evaluations made strictly before a replayed stop (all if None): the metric
  a run that stopped there is sure to keep (its params freeze at the update before the stop)."""
  if stop_step is None:
    return best_of_run(curve, higher_is_better)
  return best_of_run(list(curve)[: (stop_step - 1) // eval_every], higher_is_better)
