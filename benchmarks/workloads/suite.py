"""The workloads suite's entry: ``run(mode, progress)``, registered in ``benchmarks/run.py``.

Trains every workload of the mode (``roster.SETTINGS``) in the worker pool, scores the methods
the AlgoPerf way over all workloads, and returns a ``render.WorkloadsResult`` that renders
itself.
"""

import math
import time

import jax
import numpy as np

from benchmarks import report
from benchmarks.workloads import algoperf
from benchmarks.workloads import data
from benchmarks.workloads import intervals
from benchmarks.workloads import pool
from benchmarks.workloads import render
from benchmarks.workloads import roster
from benchmarks.workloads import trainer
from benchmarks.workloads import training


def aggregate(workloads: dict[str, dict]) -> dict:
  """Ratios, performance profiles and scores over every method and workload, each ratio and
  score with its bootstrap interval over seeds (``intervals.py``)."""
  steps = {}
  for w, res in workloads.items():
    for n, e in res["methods"].items():
      steps.setdefault(n, {})[w] = e["steps_to_target"]
  ratios = algoperf.ratios(steps)
  taus = np.linspace(1.0, algoperf.TAU_MAX, 121)
  ratio_draws, score_draws = intervals.algoperf_draws(
    {w: training.steps_draws(res, w) for w, res in workloads.items()}
  )
  return dict(
    ratios=ratios,
    taus=taus.tolist(),
    profiles={n: algoperf.profile(v, taus).tolist() for n, v in ratios.items()},
    scores={n: algoperf.score(v) for n, v in ratios.items()},
    ratio_intervals={
      n: {w: intervals.percentile_interval(d) for w, d in per.items()}
      for n, per in ratio_draws.items()
    },
    score_intervals={n: intervals.percentile_interval(d) for n, d in score_draws.items()},
    bootstrap=dict(level=intervals.LEVEL, resamples=intervals.RESAMPLES, seed=intervals.SEED),
  )


def runs_per_mode(settings: dict) -> int:
  """The progress ticks of a mode: every method on every workload, and every check."""
  names = settings["budgets"]
  stop = len(names) if settings["stop"] is None else len(settings["stop"])
  nag = len(roster.nag_factories())
  long_run = len(roster.long_run_methods()) if roster.LONG_RUN_WORKLOAD in names else 0
  return len(names) * len(roster.all_methods()) + (stop + len(settings["robust"])) * nag + long_run


def seeds_line(settings: dict) -> str:
  """How many seeds each class of method runs on."""
  return (
    f"{settings['seeds']} seeds for the tuned baselines at their chosen learning rates (the "
    f"target setters) and nag_optax's optimizers, the rates chosen on "
    f"{settings['grid_seeds']}; {settings['peer_seeds']} for the self-tuning peers; "
    f"{settings['check_seeds']} for the robustness check and the long run"
  )


def description(mode: str, settings: dict) -> str:
  """What the suite runs and how it scores, for the top of its section."""
  g = settings["grid"]
  ms_rule = (
    f"best of 3 single-seed runs of {roster.TIMED_BLOCKS} evaluation blocks"
    if mode == "full"
    else "the vmapped run time / lanes (quick mode)"
  )
  level = f"{intervals.LEVEL:.0%}"
  return f"""
AlgoPerf-style comparison on five small Flax NNX workloads (float32): digits MLP 64-128-10;
digits CNN (two 3x3 im2col convolutions); MNIST-1D (`mnist1d`, {data.MNIST1D_SAMPLES:,} generated
samples, no download) with a 3-layer 1-D CNN; MNIST-1D with a residual 1-D CNN (4 pre-norm blocks
with LayerNorm, 10 convolutions); a byte-level causal transformer LM (2 layers, width 64, 4 heads,
context {data.CONTEXT}, batch 8) on the first {data.CORPUS_CHARS:,} bytes of the sorted `*.py`
files of the Python standard library (test dirs excluded), metric validation bits per character.
Classification: batch 64, metric validation accuracy (validation loss reported too). Splits
(train / validation / test): digits 1,078 / 359 / 360 (scikit-learn's data: one validation sample
is 0.28% of accuracy); MNIST-1D {data.MNIST1D_TRAIN:,} / {data.MNIST1D_VALIDATION:,} /
{data.MNIST1D_TEST:,}; the LM 90 / 5 / 5% of the bytes, validated on 64 windows.

Methods: tuned baselines `optax.adamw`, `optax.nadamw`, `optax.sgd(momentum=0.9, nesterov=True)`
with linear warm-up over {roster.WARMUP_FRACTION:.0%} of B and cosine decay to 0 at B, lr grids
adam {roster.ADAM_GRID[g]}, sgd {roster.SGD_GRID[g]} (best lr = best median-over-seeds best
validation metric), budget B; self-tuning peers at their defaults in the installed optax and
nag_optax's tuning-free optimizers called with no argument (every method gets `value=loss` each
step, as Flax NNX's `optimizer.update(model, grads, value=loss)` passes it), budget 1.5 B.
Seeds: {seeds_line(settings)}. A seed fixes the initialisation and the batch order, the same for
every method.
Schedule-free methods are evaluated at `schedule_free_eval_params`, a method that keeps an
iterate average (`nag_optax.auto_nadamw()`) at `nag_optax.averaged_params` (the validation loss
its stopping signal reads too); the others at their training params. Train loss (last block):
the mean minibatch loss of the training params over the last evaluation block; train loss
(evaluated, end): the loss of the evaluated params at the end on a fixed sample of the training
split as large as the validation split. Target per workload (AlgoPerf): median over seeds of the
best validation metric of the best tuned baseline. Steps to target: first evaluation at or beyond
it, median over seeds (a miss within B for baselines / 1.5 B for self-tuning = "-").
Intervals: `x [low, high]` is a {level} percentile bootstrap interval over seeds
({intervals.RESAMPLES:,} resamples, RNG seed {intervals.SEED}): each method's seeds resampled with
replacement, independently of every other method's; the target setter's resampled seeds also
set the resample's target, so the interval carries the target's noise too; "-" as a bound is a
miss.
ms/step: {ms_rule}, evaluation included.
Learning rate at floor: {algoperf.FLOOR_RULE}. Robustness: every nag_optax optimizer from
initial rates {roster.ROBUST_LRS} (a traced argument, vmapped) on {", ".join(settings["robust"])}.
Stopping signal: `STOP_CONFIGS` in `benchmarks/workloads/roster.py` (patience
{roster.STOP_PATIENCE_FRACTION:g} B steps to `validation_patience`, with `validation_loss=`, where
the factory accepts them{stop_options()}).
"""


def stop_options() -> str:
  """The stop's further options, as the description lists them."""
  if not roster.STOP_OPTIONS:
    return ""
  return "; also " + ", ".join(f"`{k}={v!r}`" for k, v in roster.STOP_OPTIONS.items())


def notes(mode: str, settings: dict) -> list[str]:
  out = [
    f"Steps to target move in blocks of the evaluation interval (B / {settings['evals']}).",
    "The language model is budget-limited: its loss still falls slowly at B; B is where the "
    "tuned baselines' validation loss has flattened on this CPU budget.",
  ]
  if mode != "full":
    full = roster.SETTINGS["full"]
    out.append(
      f"Mode `{mode}`: {seeds_line(settings)}; {settings['grid']} grids, budgets "
      f"{settings['budgets']}. Full: {seeds_line(full)}; {full['grid']} grids, budgets "
      f"{full['budgets']}."
    )
  return out


def problem(res: dict) -> report.ProblemResult:
  """One workload as the runner's generic ``report.ProblemResult`` (its JSON and summary)."""
  runs = []
  for n, e in res["methods"].items():
    v = e["reported"]
    reached = bool(math.isfinite(e["steps_to_target"]))
    steps = int(e["steps_to_target"]) if reached else e["steps"]
    runs.append(
      report.MethodRun(
        method=n,
        needs="tuning" if e["kind"] == "baseline" else "—",
        steps=steps,
        reached=reached,
        grad_evals=steps,
        wall_time_s=e["grid_run_s"],
        final_metric=v["final_metric"],
        history=v["median_metric_curve"],
        history_every=res["eval_every"],
        note=(f"lr {e['lr']:g}" if e["kind"] == "baseline" else ""),
        extra=dict(ms_per_step=e["ms_per_step"]),
      )
    )
  return report.ProblemResult(name=res["label"], label=res["label"], cap=res["budget"], runs=runs)


def run(mode: str, progress: report.Progress) -> report.SuiteResult:
  # Deep-learning training runs in float32 (the runner turns float64 on for the other suites;
  # the worker processes start with it off).
  with jax.enable_x64(False):
    start = time.perf_counter()
    settings = roster.SETTINGS.get(mode, roster.SETTINGS["quick"])
    report.add_runs(progress, runs_per_mode(settings))
    timer = trainer.Timer()
    workloads = pool.run_parallel(list(settings["budgets"]), settings, mode, progress, timer)
    return render.WorkloadsResult(
      name="workloads",
      title="Deep-learning workloads (AlgoPerf-style)",
      description=description(mode, settings),
      metric_label="validation metric",
      tol=0.0,
      mode=mode,
      problems=[problem(res) for res in workloads.values()],
      notes=notes(mode, settings),
      total_time_s=time.perf_counter() - start,
      render_markdown=render.render_markdown,
      render_plot=render.render_plot,
      workloads=workloads,
      aggregate=aggregate(workloads),
      parts_s=timer.parts,
      settings=dict(settings),
    )
