"""Training of one workload: every method to its budget, the target, the steps to it, the checks.

:func:`run_workload` trains every row of ``roster.all_methods()`` on one workload (a tuned
baseline over its learning-rate grid, each seed and grid value a lane of one compiled program,
then its chosen rate on more seeds), sets the workload's target from the tuned baselines
(AlgoPerf), counts every method's steps to it with a bootstrap interval over seeds, and runs the
checks of ``checks.py``. Its result is a JSON-ready dict that ``render.py`` reads.
"""

import math
import time
from typing import Any
from typing import Callable

import numpy as np
import optax

from benchmarks import report
from benchmarks.methods import Method
from benchmarks.workloads import algoperf
from benchmarks.workloads import checks
from benchmarks.workloads import intervals
from benchmarks.workloads import roster
from benchmarks.workloads import trainer
from benchmarks.workloads.data import Workload


def summarize(wl: Workload, lane: dict[str, np.ndarray], eval_every: int, budget: int) -> dict:
  """The per-seed curves of one grid value -> medians over seeds and per-seed detail."""
  metric = lane["metric"]  # (seeds, blocks)
  at = lambda step: (
    float(np.median(metric[:, step // eval_every - 1]))
    if step // eval_every <= metric.shape[1]
    else math.nan
  )
  lr = lane["lr"]
  return dict(
    metric_curves=metric.tolist(),
    median_metric_curve=np.median(metric, 0).tolist(),
    val_loss_curve=np.median(lane["val_loss"], 0).tolist(),
    best_per_seed=[algoperf.best_of_run(c, wl.higher_is_better) for c in metric],
    median_best=algoperf.median_best(metric, wl.higher_is_better),
    metric_at_B=at(budget),
    metric_at_1_5B=at(int(roster.SELF_TUNING_FACTOR * budget)),
    final_metric=float(np.median(metric[:, -1])),
    final_val_loss=float(np.median(lane["val_loss"][:, -1])),
    final_train_loss=float(np.median(lane["train_loss"][:, -1])),
    final_train_loss_evaluated=float(np.median(lane["train_loss_eval"])),
    lr_curve=(np.nanmedian(lr, 0).tolist() if np.isfinite(lr).any() else None),
  )


def best_value(values: list[dict], higher_is_better: bool) -> int:
  """The grid value whose median best validation metric is best (a diverged one is worst)."""
  worst = -math.inf if higher_is_better else math.inf
  key = lambda i: values[i]["median_best"] if np.isfinite(values[i]["median_best"]) else worst
  pick = max if higher_is_better else min
  return pick(range(len(values)), key=key)


def run_values(
  setup: trainer.Setup,
  method: Method,
  grid: tuple,
  blocks: int,
  make: Callable[[Any], optax.GradientTransformation],
  timer: trainer.Timer,
  part: str,
) -> tuple[list[dict], float, float]:
  """Every value of ``grid`` x every seed of ``setup`` for ``blocks`` evaluation blocks, in one
  compiled call (its wall time added to ``timer``'s ``part``): the summary per value, the wall
  seconds (compilation included), the run's."""
  wl, eval_every = setup.wl, setup.eval_every
  train = trainer.make_trainer(wl, make, blocks, eval_every, eval_params=method.eval_params)
  steps = blocks * eval_every
  out, seconds, run_s = trainer.run_lanes(train, setup.params, setup.batches[:, :steps], grid)
  timer.add(f"{wl.name}: {part}", seconds)
  values = [
    summarize(wl, {k: v[i] for k, v in out.items()}, eval_every, setup.budget)
    for i in range(len(grid))
  ]
  return values, seconds, run_s


def train_method(
  setup: trainer.Setup, method: Method, settings: dict, mode: str, timer: trainer.Timer
) -> dict:
  """One row on the workload: a tuned baseline over its grid for B steps on
  ``settings["grid_seeds"]``, its chosen rate then re-run on ``settings["seeds"]``; a
  self-tuning method at its defaults for 1.5 B on its seeds (``roster.seeds_of``); every seed
  and grid value a lane of one program. Its summary per grid value, the chosen value, the
  summary of the reported run (``reported``), and its ms/step."""
  seeds = roster.seeds_of(method.kind, settings)
  if method.kind == "baseline":
    grids = roster.ADAM_GRID if "adam" in method.name else roster.SGD_GRID
    grid, blocks = grids[settings["grid"]], setup.blocks_budget
    make = lambda h: method.build(h, setup.budget)
    search = setup.take(settings["grid_seeds"])
    values, seconds, run_s = run_values(
      search, method, grid, blocks, make, timer, "tuned baselines (lr grid)"
    )
    best = best_value(values, setup.wl.higher_is_better)
    lanes = len(search.seeds) * len(grid)
    if seeds == len(search.seeds):
      reported, rerun_s = values[best], 0.0
    else:
      rerun, rerun_s, _ = run_values(
        setup.take(seeds), method, (grid[best],), blocks, make, timer, "tuned baselines (rerun)"
      )
      reported = rerun[0]
  else:
    grid, blocks, best = (math.nan,), setup.blocks_self_tuning, 0
    make = lambda h: method.build(None, setup.budget)
    values, seconds, run_s = run_values(
      setup.take(seeds), method, grid, blocks, make, timer, "self-tuning"
    )
    reported, rerun_s, lanes = values[0], 0.0, seeds
  steps = blocks * setup.eval_every
  entry: dict[str, Any] = dict(
    kind=method.kind,
    grid=list(grid),
    grid_seeds=settings["grid_seeds"] if method.kind == "baseline" else seeds,
    values=values,
    best=best,
    lr=grid[best],
    seeds=seeds,
    reported=reported,
    grid_wall_s=seconds,
    grid_run_s=run_s,
    rerun_wall_s=rerun_s,
    steps=steps,
  )
  start = time.perf_counter()
  if mode == "full":
    timed = trainer.make_trainer(
      setup.wl, make, roster.TIMED_BLOCKS, setup.eval_every, eval_params=method.eval_params
    )
    timed_batches = setup.batches[:, : roster.TIMED_BLOCKS * setup.eval_every]
    hyper = grid[best] if method.kind == "baseline" else 0.0
    entry["ms_per_step"] = trainer.ms_per_step(timed, setup.params, timed_batches, hyper)
    entry["ms_rule"] = "best of 3 single-seed runs"
  else:  # one run, all lanes: run time / (steps x lanes)
    entry["ms_per_step"] = 1e3 * run_s / (steps * lanes)
    entry["ms_rule"] = "one vmapped run / lanes"
  timer.add(f"{setup.wl.name}: ms/step timing", time.perf_counter() - start)
  return entry


def set_target(res: dict, setup: trainer.Setup) -> None:
  """The workload's target (AlgoPerf: the best tuned baseline's median over seeds of its best
  validation metric, at its chosen learning rate), every method's steps to it, and their ratio
  to the target setter's, with a bootstrap interval over its seeds and the setter's
  (``intervals.py``), in place."""
  wl = setup.wl
  baselines = {
    n: e["reported"]["metric_curves"] for n, e in res["methods"].items() if e["kind"] == "baseline"
  }
  res["target"], res["target_set_by"] = algoperf.target(baselines, wl.higher_is_better)
  for e in res["methods"].values():
    v = e["reported"]
    e["cap"] = (
      setup.budget if e["kind"] == "baseline" else setup.blocks_self_tuning * setup.eval_every
    )
    per_seed = [
      algoperf.steps_to_target(c, res["target"], setup.eval_every, wl.higher_is_better)
      for c in v["metric_curves"]
    ]
    e["per_seed_steps"] = [s if s <= e["cap"] else math.inf for s in per_seed]
    e["steps_to_target"] = float(np.median(e["per_seed_steps"]))
    if e["kind"] == "nag_optax" and v["lr_curve"] is not None:
      e["lr_at_floor"] = algoperf.lr_at_floor(v["lr_curve"])
      e["final_lr"] = v["lr_curve"][-1]
  draws = steps_draws(res, wl.name)
  setter = res["methods"][res["target_set_by"]]
  for n, e in res["methods"].items():
    e["vs_setter"] = float(intervals.ratio(e["steps_to_target"], setter["steps_to_target"]))
    e["vs_setter_interval"] = intervals.percentile_interval(
      intervals.ratio(draws[n], draws[res["target_set_by"]])
    )


def steps_draws(res: dict, name: str) -> dict[str, np.ndarray]:
  """{method: (resamples,) median steps to the target} of a workload's result, seeds resampled
  (``intervals.median_steps_draws``; the same draws on every call)."""
  return intervals.median_steps_draws(
    {n: e["reported"]["metric_curves"] for n, e in res["methods"].items()},
    res["target_set_by"],
    res["eval_every"],
    res["higher_is_better"],
    {n: e["cap"] for n, e in res["methods"].items()},
    rng=intervals.rng_for(name),
  )


def accuracy_uncertainty(res: dict, wl: Workload) -> None:
  """The size of the validation split and, for an accuracy, the binomial standard error of the
  target and one sample's weight, in place."""
  n = len(wl.arrays("validation")[0])
  res["validation_samples"] = n
  if wl.metric == "accuracy":
    res["one_sample"] = 1.0 / n
    res["target_standard_error"] = intervals.binomial_standard_error(res["target"], n)


def run_workload(
  name: str, settings: dict, mode: str, progress: report.Ticker, timer: trainer.Timer
) -> dict:
  """Everything the suite measures on workload ``name`` in ``mode`` (``settings`` its
  ``roster.SETTINGS`` entry)."""
  start = time.perf_counter()
  wl = roster.WORKLOADS[name]()
  budget = settings["budgets"][name]
  setup = trainer.prepare(wl, budget, settings["evals"], range(roster.most_seeds(settings)))
  timer.add(f"{name}: data and init", time.perf_counter() - start)
  res: dict[str, Any] = dict(
    methods={},
    budget=budget,
    eval_every=setup.eval_every,
    seeds=settings["seeds"],
    grid_seeds=settings["grid_seeds"],
    peer_seeds=settings["peer_seeds"],
    check_seeds=settings["check_seeds"],
    info=wl.info,
    label=wl.label,
    metric=wl.metric,
    higher_is_better=wl.higher_is_better,
  )
  for m in roster.all_methods():
    progress.set_postfix_str(f"{name}: {m.name[:40]}")
    res["methods"][m.name] = train_method(setup, m, settings, mode, timer)
    progress.update(1)
  set_target(res, setup)
  accuracy_uncertainty(res, wl)
  if settings["stop"] is None or name in settings["stop"]:
    res["stop"] = checks.stopping_signal(setup.take(settings["seeds"]), progress, timer)
  else:
    res["stop"] = {}
  if name in settings["robust"]:
    res["robust"] = checks.robustness(setup.take(settings["check_seeds"]), progress, timer)
  if name == roster.LONG_RUN_WORKLOAD and mode in roster.LONG_RUN_STEPS:
    steps = roster.LONG_RUN_STEPS[mode]
    res["long_run"] = checks.long_run(wl, settings["check_seeds"], steps, progress, timer)
  res["wall_s"] = time.perf_counter() - start
  return res
