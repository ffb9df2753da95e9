"""The worker pool: the workloads trained in parallel, one process per CPU core.

XLA compilation of the suite's small programs dominates the quick mode and runs on one core, so
the workloads are spread over one process per core (at most one per workload), each pinned to
its own core so that its ms/step is a one-core figure, undisturbed by the others. Workloads are
assigned heaviest first (``roster.RELATIVE_COST``) to the least-loaded worker. Workers report
progress to the parent's bar through a queue.
"""

import concurrent.futures
import multiprocessing
import os
import queue
from typing import Any
from typing import Optional

import jax

from benchmarks import report
from benchmarks.workloads import roster
from benchmarks.workloads import trainer
from benchmarks.workloads import training


class QueueProgress:
  """A worker's ``report.Ticker``, forwarded to the parent's progress bar through a queue."""

  def __init__(self, messages: Any) -> None:
    self.messages = messages

  def set_postfix_str(self, s: str) -> None:
    self.messages.put(("postfix", s))

  def update(self, n: int = 1) -> None:
    self.messages.put(("update", n))


def pin_worker(cpu: Optional[int]) -> None:
  """Runs the calling process on ``cpu`` alone (where the platform allows it)."""
  if cpu is not None and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpu})


def worker(name: str, settings: dict, mode: str, messages: Any) -> tuple[dict, dict[str, float]]:
  """One workload in a worker process, in float32: its result and the wall time of its parts."""
  timer = trainer.Timer()
  with jax.enable_x64(False):
    res = training.run_workload(name, settings, mode, QueueProgress(messages), timer)
  return res, timer.parts


def cpus() -> list[int]:
  """The CPU cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def plan(names: list[str], workers: int) -> list[list[str]]:
  """The workloads of each worker: heaviest first, each to the least-loaded worker."""
  loads, assigned = [0.0] * workers, [[] for _ in range(workers)]
  for name in sorted(names, key=lambda w: -roster.RELATIVE_COST.get(w, 1)):
    i = loads.index(min(loads))
    assigned[i].append(name)
    loads[i] += roster.RELATIVE_COST.get(name, 1)
  return assigned


def _forward(message: tuple[str, Any], progress: report.Ticker) -> None:
  kind, value = message
  if kind == "update":
    progress.update(value)
  else:
    progress.set_postfix_str(value)


def run_parallel(
  names: list[str], settings: dict, mode: str, progress: report.Ticker, timer: trainer.Timer
) -> dict[str, dict]:
  """``training.run_workload`` for every workload of ``names``, in worker processes; the results
  in the order of ``names``, the parts' wall times added to ``timer``."""
  cores = cpus()
  n = max(1, min(len(cores), len(names)))
  assigned = plan(names, n)
  ctx = multiprocessing.get_context("spawn")
  results = {}
  with ctx.Manager() as manager:
    messages = manager.Queue()
    pools = [
      concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=pin_worker, initargs=(cores[i] if n > 1 else None,)
      )
      for i in range(n)
    ]
    try:
      futures = {
        pools[i].submit(worker, name, settings, mode, messages): name
        for i in range(n)
        for name in assigned[i]
      }
      pending = set(futures)
      while pending:
        try:
          _forward(messages.get(timeout=0.5), progress)
        except queue.Empty:
          pass
        done = {f for f in pending if f.done()}
        for f in done:
          results[futures[f]], parts = f.result()
          for k, v in parts.items():
            timer.add(k, v)
        pending -= done
      while not messages.empty():
        _forward(messages.get(), progress)
    finally:
      for pool in pools:
        pool.shutdown()
  return {name: results[name] for name in names}
