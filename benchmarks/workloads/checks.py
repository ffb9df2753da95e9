"""The checks beside the time to target: the stopping signal, robustness to the initial
learning rate, and a long run at the defaults.

Each trains nag_optax's tuning-free optimizers (the long run: also a few peers) on a prepared
workload and returns a JSON-ready dict that ``render.py`` reads.
"""

import math
import time
from typing import Any
from typing import Callable

import numpy as np
import optax

from benchmarks import report
from benchmarks.workloads import algoperf
from benchmarks.workloads import roster
from benchmarks.workloads import trainer
from benchmarks.workloads.data import Workload


def stopping_signal(setup: trainer.Setup, progress: report.Ticker, timer: trainer.Timer) -> dict:
  """Each nag_optax optimizer with the stopping criteria a user would enable
  (``roster.STOP_CONFIGS``: the patience of ``roster.stop_lanes``, and ``STOP_OPTIONS``), judged
  against the same optimizer without the stop, on every seed of ``setup``.

  The stopped run freezes its params, so it cannot be its own reference. The reference is a
  second lane of the same program whose patience exceeds the run: same seeds and batches, and
  until the stop the same arithmetic, so the comparison carries no rounding drift (a run
  compiled separately drifts into another trajectory on the MNIST-1D workloads).
  """
  wl, eval_every, blocks = setup.wl, setup.eval_every, setup.blocks_self_tuning
  patience, never = roster.stop_lanes(setup.budget, eval_every, blocks * eval_every)
  out_all = {}
  for name, make_stop in roster.STOP_CONFIGS.items():
    progress.set_postfix_str(f"{wl.name}: stop {name[:30]}")
    start = time.perf_counter()
    reads_validation = roster.STOP_READS_VALIDATION[name]
    train = trainer.make_trainer(
      wl,
      make_stop,
      blocks,
      eval_every,
      record_stop=True,
      pass_validation_loss=reads_validation,
    )
    out, seconds, _ = trainer.run_lanes(train, setup.params, setup.batches, (patience, never))
    timer.add(f"{wl.name}: stopping signal", time.perf_counter() - start)
    per_seed = []
    for s in range(len(setup.seeds)):
      stop_step = int(out["stop"][0, s])
      per_seed.append(
        algoperf.stop_outcome(
          out["metric"][0, s],
          stop_step if stop_step > 0 else None,
          out["metric"][1, s],
          eval_every,
          wl.higher_is_better,
        )
      )
    out_all[name] = dict(
      patience=patience,
      options={roster.STOP_KEYWORDS[name]: patience, **roster.STOP_OPTIONS},
      reads_validation_loss=reads_validation,
      per_seed=per_seed,
      wall_s=seconds,
      reference_never_stopped=bool(np.all(out["stop"][1] < 0)),
    )
    progress.update(1)
  return out_all


def robustness(setup: trainer.Setup, progress: report.Ticker, timer: trainer.Timer) -> dict:
  """Each nag_optax optimizer from every initial rate of ``roster.ROBUST_LRS`` (a traced
  argument, one lane each): the final validation metric per rate, its spread, and the worst
  relative to the best."""
  wl, hib = setup.wl, setup.wl.higher_is_better
  out_all = {}
  for name, factory in roster.nag_factories().items():
    progress.set_postfix_str(f"{wl.name}: robustness {name[:30]}")
    train = trainer.make_trainer(
      wl,
      (lambda f: lambda h: roster.at_defaults(f, h))(factory),
      setup.blocks_self_tuning,
      setup.eval_every,
    )
    out, seconds, _ = trainer.run_lanes(train, setup.params, setup.batches, roster.ROBUST_LRS)
    timer.add(f"{wl.name}: robustness", seconds)
    lanes = range(len(roster.ROBUST_LRS))
    finals = [float(np.median(out["metric"][i, :, -1])) for i in lanes]
    lr_curves = [
      np.nanmedian(out["lr"][i], 0).tolist() if np.isfinite(out["lr"][i]).any() else None
      for i in lanes
    ]
    clean = [x if np.isfinite(x) else (-math.inf if hib else math.inf) for x in finals]
    best, worst = (max(clean), min(clean)) if hib else (min(clean), max(clean))
    out_all[name] = dict(
      final=finals,
      lr_curves=lr_curves,
      spread=abs(best - worst),
      worst_relative=(algoperf.relative_loss(worst, best, hib) if np.isfinite(worst) else math.inf),
    )
    progress.update(1)
  return out_all


def long_run(
  wl: Workload, seeds: int, steps: int, progress: report.Ticker, timer: trainer.Timer
) -> dict:
  """Every ``roster.long_run_methods()`` row for ``steps`` steps at its defaults: does the
  training loss keep falling, and where does the learning rate end?"""
  eval_every = steps // 40
  params, batches = trainer.seed_inputs(wl, range(seeds), steps)
  out_all = {}
  for name, factory in roster.long_run_methods().items():
    progress.set_postfix_str(f"{wl.name}: long run {name[:30]}")
    make: Callable[[Any], optax.GradientTransformation] = (lambda f: lambda h: f())(factory)
    train = trainer.make_trainer(wl, make, steps // eval_every, eval_every)
    out, seconds, _ = trainer.run_lanes(train, params, batches, (math.nan,))
    timer.add(f"{wl.name}: long run", seconds)
    loss = np.median(out["train_loss"][0], 0)  # (blocks,)
    blocks = len(loss)
    early = float(np.mean(loss[blocks // 5 : 2 * blocks // 5]))
    late = float(np.mean(loss[4 * blocks // 5 :]))
    lr = np.nanmedian(out["lr"][0], 0) if np.isfinite(out["lr"][0]).any() else None
    out_all[name] = dict(
      train_loss_curve=loss.tolist(),
      eval_every=eval_every,
      steps=steps,
      train_loss_early=early,
      train_loss_late=late,
      late_over_early=late / early,
      final_metric=float(np.median(out["metric"][0][:, -1])),
      final_lr=float(lr[-1]) if lr is not None else None,
      max_lr=float(np.nanmax(lr)) if lr is not None else None,
      lr_curve=lr.tolist() if lr is not None else None,
    )
    progress.update(1)
  return out_all
