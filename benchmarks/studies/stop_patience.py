"""How much the validation stop loses, per patience, on seeds the workloads suite never uses.

``python -m benchmarks.studies.stop_patience [--seeds 10-14] [--fractions 0.2,0.25,0.3,0.4]
[--workloads a,b]`` trains each tuning-free nag_optax optimizer at its defaults, without a stop,
on the workloads of the suite's full mode (same budgets B, evaluation every B / 40 steps, 1.5 B
steps), records every validation evaluation, and replays ``validation_patience = fraction x B``
on those curves (``algoperf.replay_validation_stop``: the update at which ``stop_when`` would
fire, fed the latest validation loss as the suite feeds it). Per optimizer and patience it prints
the runs whose stop lost at most 1% of the run's best validation metric (the metric kept is that
of the evaluations before the stop), the worst loss, and the runs stopping within 10% of the
step of the best metric. It is the evidence behind the patience the guide recommends and the
suite uses (``roster.STOP_PATIENCE_FRACTION``); about 6 minutes on 2 cores.
"""

import argparse
import time
from typing import Callable

import jax
import numpy as np
import optax

from benchmarks.studies import seed_range
from benchmarks.workloads import algoperf
from benchmarks.workloads import roster
from benchmarks.workloads import trainer

LOST_LIMIT = 0.01  # the goal: a stop loses at most 1% of the best validation metric
WITHIN = 0.1  # and comes within 10% of the step of the best


def curves(
  name: str, factory: Callable[[], optax.GradientTransformation], seeds: list[int]
) -> tuple:
  """(metric, validation loss) per seed and evaluation, B, the evaluation interval, the
  workload."""
  full = roster.SETTINGS["full"]
  budget = full["budgets"][name]
  wl = roster.WORKLOADS[name]()
  setup = trainer.prepare(wl, budget, full["evals"], seeds)
  train = trainer.make_trainer(
    wl, lambda *_: factory(), setup.blocks_self_tuning, setup.eval_every, pass_validation_loss=True
  )
  out = jax.device_get(jax.jit(jax.vmap(train))(setup.params, setup.batches))
  return np.asarray(out["metric"]), np.asarray(out["val_loss"]), budget, setup.eval_every, wl


def outcome(metric, val_loss, budget, every, higher_is_better, fraction) -> tuple:
  """(relative loss, stop step over best step) of one seed's replayed stop."""
  stop = algoperf.replay_validation_stop(val_loss, every, max(every, int(fraction * budget)))
  kept = algoperf.kept_before_stop(metric, stop, every, higher_is_better)
  best = algoperf.best_of_run(metric, higher_is_better)
  best_step = algoperf.step_of_best(metric, every, higher_is_better)
  lost = algoperf.relative_loss(kept, best, higher_is_better)
  # No evaluation before the stop (or a diverged run): count it as everything lost.
  ratio = (stop or len(metric) * every) / best_step if best_step else np.nan
  return (lost if np.isfinite(lost) else 1.0), ratio


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.stop_patience",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--seeds", default="10-14")
  parser.add_argument("--fractions", default="0.2,0.25,0.3,0.4")
  parser.add_argument("--workloads", default=",".join(roster.SETTINGS["full"]["budgets"]))
  args = parser.parse_args(argv)
  jax.config.update(
    "jax_enable_x64", True
  )  # as `python -m benchmarks` sets it; params stay float32
  seeds = seed_range(args.seeds)
  fractions = [float(f) for f in args.fractions.split(",")]
  names = args.workloads.split(",")
  factories = roster.nag_factories()
  results = {(n, f): [] for n in factories for f in fractions}
  start = time.perf_counter()
  for name in names:
    for opt, factory in factories.items():
      metric, val_loss, budget, every, wl = curves(name, factory, seeds)
      for s in range(len(seeds)):
        for f in fractions:
          results[opt, f].append(
            (name, outcome(metric[s], val_loss[s], budget, every, wl.higher_is_better, f))
          )
      print(f"{name}: {opt} ({time.perf_counter() - start:.0f} s)", flush=True)
  print(
    f"\nSeeds {args.seeds}, {', '.join(names)}; patience = fraction x B.\n\n"
    "| optimizer | patience | lost <= 1% | worst loss | stop within 10% of the best step |\n"
    "|---|---|---|---|---|"
  )
  for (opt, f), rows in results.items():
    lost = np.array([r[1][0] for r in rows])
    ratio = np.array([r[1][1] for r in rows])
    within = int(np.sum(np.abs(ratio - 1.0) <= WITHIN))
    print(
      f"| {opt} | {f:g} B | {int(np.sum(lost <= LOST_LIMIT))} / {len(rows)} | "
      f"{100 * np.max(lost):.2f}% | {within} / {len(rows)} |"
    )


if __name__ == "__main__":
  main()
