"""Which validation stop is safe and thrifty, replayed on whole runs of every workload.

``python -m benchmarks.studies.stop_rule [--seeds 10-14] [--workloads a,b] [--curves FILE]``
trains each tuning-free nag_optax optimizer at its defaults, without a stop, on the workloads of
the suite's full mode (same budgets B, evaluation every B / 40 steps, 1.5 B steps, seeds the suite
never uses), records every validation evaluation (at the evaluated params: the iterate average
where the optimizer keeps one), and replays ``stop_when``'s validation stop on those curves
(``algoperf.replay_validation_stop``, update for update) for every rule of a grid: the least
patience ``P`` (a fraction of B), the minimum relative improvement ``validation_min_delta`` and the
relative patience ``validation_patience_ratio``. ``auto_nag_sgd(average_power=7)`` runs beside
the two optimizers: what an iterate average does for ``auto_nag_sgd``'s noisy validation loss.

A run meets the goals when the metric it keeps (the best evaluation before the stop) loses at
most 0.5% against the best of the whole run and the stop comes at most 1.5x the step of that best
(a rule that never fires meets the second goal only if the run's best comes in its last fifth: it
was still improving). Per optimizer it prints the rules that meet both goals on the most runs,
with the worst loss and the median stop / best step. ``--curves FILE`` saves the curves
(``.npz``) on the first call and replays from it afterwards. About 12 minutes on 2 cores for five
seeds.
"""

import argparse
import functools
import inspect
import itertools
import os
import time

import jax
import numpy as np

import nag_optax
from benchmarks.studies import seed_range
from benchmarks.workloads import algoperf
from benchmarks.workloads import roster
from benchmarks.workloads import trainer

LOST_LIMIT = 0.005  # the goal: the stop keeps the run's best metric within 0.5%
STOP_LIMIT = 1.5  # and comes at most 1.5x the step of that best
STILL_IMPROVING = 0.8  # a run whose best comes after 80% of it was still improving
PATIENCE_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
MIN_DELTAS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)
RATIOS = (0.0, 0.25, 0.35, 0.5, 1.0)
# Beside the suite's optimizers: auto_nag_sgd with an iterate average, whose validation loss is
# less noisy than that of its training params.
VARIANTS = {
  "nag_optax.auto_nag_sgd(average_power=7)": functools.partial(
    nag_optax.auto_nag_sgd, average_power=7.0
  ),
}


def curves(name: str, factory, seeds: list) -> tuple:
  """(metric, validation loss) per seed and evaluation, B, the evaluation interval, the workload:
  ``factory()`` at its defaults, no stop, 1.5 B steps of the suite's full mode."""
  full = roster.SETTINGS["full"]
  budget = full["budgets"][name]
  wl = roster.WORKLOADS[name]()
  setup = trainer.prepare(wl, budget, full["evals"], seeds)
  train = trainer.make_trainer(
    wl, lambda *_: factory(), setup.blocks_self_tuning, setup.eval_every, pass_validation_loss=True
  )
  out = jax.device_get(jax.jit(jax.vmap(train))(setup.params, setup.batches))
  return np.asarray(out["metric"]), np.asarray(out["val_loss"]), budget, setup.eval_every, wl


def record(names: list, seeds: list, path: str | None) -> dict:
  """(workload, optimizer) -> (metric, val_loss, budget, every, higher_is_better), recorded or
  loaded from ``path``."""
  if path and os.path.exists(path):
    with np.load(path, allow_pickle=True) as data:
      return data["curves"].item()
  recorded = {}
  start = time.perf_counter()
  for name in names:
    for opt, factory in (roster.nag_factories() | VARIANTS).items():
      metric, val_loss, budget, every, wl = curves(name, factory, seeds)
      recorded[name, opt] = (metric, val_loss, budget, every, wl.higher_is_better)
      print(f"{name}: {opt} ({time.perf_counter() - start:.0f} s)", flush=True)
  if path:
    np.savez(path, curves=np.array(recorded, dtype=object))
  return recorded


def outcome(metric, val_loss, budget, every, higher_is_better, rule) -> tuple:
  """(relative loss, stop step / best step, fired) of one run under ``rule``."""
  fraction, min_delta, ratio = rule
  stop = algoperf.replay_validation_stop(
    val_loss,
    every,
    max(every, int(fraction * budget)),
    min_delta=min_delta,
    patience_ratio=ratio,
  )
  kept = algoperf.kept_before_stop(metric, stop, every, higher_is_better)
  best = algoperf.best_of_run(metric, higher_is_better)
  best_step = algoperf.step_of_best(metric, every, higher_is_better)
  lost = algoperf.relative_loss(kept, best, higher_is_better)
  lost = lost if np.isfinite(lost) else 1.0
  if not best_step:
    return lost, np.nan, stop is not None
  if stop is None:  # ran to the end: thrifty only if it was still improving there
    late = best_step >= STILL_IMPROVING * len(metric) * every
    return lost, (1.0 if late else np.inf), False
  return lost, stop / best_step, True


def default_rule() -> tuple:
  """The rule the suite checks: its least patience, the optimizers' default minimum improvement
  and relative patience (read from ``auto_nadamw``'s signature; ``auto_nag_sgd``'s are the same)."""
  parameters = inspect.signature(nag_optax.auto_nadamw).parameters
  return (
    roster.STOP_PATIENCE_FRACTION,
    parameters["validation_min_delta"].default,
    parameters["validation_patience_ratio"].default,
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.stop_rule",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--seeds", default="10-14")
  parser.add_argument("--workloads", default=",".join(roster.SETTINGS["full"]["budgets"]))
  parser.add_argument("--curves", default=None, help="an .npz to save the curves to / load from")
  parser.add_argument("--top", type=int, default=8, help="rules printed per optimizer")
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)  # as `python -m benchmarks` sets it
  curves = record(args.workloads.split(","), seed_range(args.seeds), args.curves)
  rules = list(itertools.product(PATIENCE_FRACTIONS, MIN_DELTAS, RATIOS))
  if default_rule() not in rules:
    rules.append(default_rule())
  optimizers = sorted({opt for _, opt in curves})
  print(
    f"\nSeeds {args.seeds}; goals: loss <= {LOST_LIMIT:.1%}, stop <= {STOP_LIMIT}x the best step.\n"
  )
  for opt in optimizers:
    table = []
    for rule in rules:
      rows = []
      for (name, o), (metric, val_loss, budget, every, hib) in curves.items():
        if o != opt:
          continue
        rows += [
          outcome(metric[s], val_loss[s], budget, every, hib, rule) for s in range(len(metric))
        ]
      lost = np.array([r[0] for r in rows])
      ratio = np.array([r[1] for r in rows])
      safe = lost <= LOST_LIMIT
      thrifty = ratio <= STOP_LIMIT
      table.append(
        (
          int(np.sum(safe & thrifty)),
          int(np.sum(safe)),
          int(np.sum(thrifty)),
          len(rows),
          rule,
          float(lost.max()),
          float(np.nanmedian(np.where(np.isfinite(ratio), ratio, np.nan))),
        )
      )
    default = next(t for t in table if t[4] == default_rule())
    table.sort(key=lambda t: (-t[0], -t[1], t[5]))
    print(
      f"{opt}\n\n| P / B | min_delta | ratio | both goals | loss <= 0.5% | stop <= 1.5x | "
      "worst loss | median stop / best |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for both, safe, thrifty, n, (f, d, r), worst, median in [*table[: args.top], default]:
      print(
        f"| {f:g}{' (default)' if (f, d, r) == default_rule() else ''} | {d:g} | {r:g} | "
        f"{both} / {n} | {safe} / {n} | {thrifty} / {n} | "
        f"{100 * worst:.2f}% | {median:.2f} |"
      )
    print()


if __name__ == "__main__":
  main()
