"""What a suite returns, and how it becomes a markdown table, a JSON file and a plot."""

import dataclasses
import json
import math
import os
from typing import Any
from typing import Callable
from typing import Optional
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


class Ticker(Protocol):
  """What a running part of a suite reports: what it runs now, and each run done."""

  def set_postfix_str(self, s: str) -> Any: ...

  def update(self, n: int) -> Any: ...


class Progress(Ticker, Protocol):
  """The part of a ``tqdm`` bar a suite uses: it adds its runs to ``total`` and ticks them off."""

  total: Optional[float]

  def refresh(self) -> Any: ...


def add_runs(progress: Progress, runs: int) -> None:
  """Adds a suite's ``runs`` to the progress bar's total."""
  progress.total = (progress.total or 0) + runs
  progress.refresh()


@dataclasses.dataclass
class MethodRun:
  """One method on one problem.

  The run-to-target fields (``steps`` to ``history``) stay ``None`` / empty where a suite does
  not measure them (``step_cost`` times one step: its numbers are in ``extra``); the generic
  tables print them as "-".
  """

  method: str
  needs: str = "—"  # what a user must know or supply
  steps: Optional[int] = None  # iterations run (the cap when the target was not reached)
  reached: Optional[bool] = None
  grad_evals: Optional[int] = None
  function_evals: Optional[int] = None  # None: not counted (the value comes with the gradient)
  wall_time_s: Optional[float] = None  # run time after compilation (for a grid: the whole grid)
  final_metric: Optional[float] = None
  history: list = dataclasses.field(default_factory=list)  # metric every `history_every` steps
  history_every: int = 1
  note: str = ""  # e.g. the chosen learning rate of a grid
  extra: dict = dataclasses.field(default_factory=dict)  # the suite's own measurements

  @property
  def iterations(self) -> Optional[int]:
    return self.steps if self.reached else None


@dataclasses.dataclass
class ProblemResult:
  """All methods on one problem."""

  name: str
  label: str  # short column header, e.g. "kappa 1e4"
  cap: int
  runs: list
  bound: Optional[int] = None  # iterations no first-order method can beat (N_LB), if known
  bound_rate: Optional[float] = None  # q in ||x_k - x*|| >= q^k ||x_0 - x*||, for the plot
  info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SuiteResult:
  """A suite's whole output."""

  name: str
  title: str
  description: str  # markdown: the problem, the target, what the columns mean
  metric_label: str
  tol: float
  mode: str
  problems: list
  notes: list = dataclasses.field(default_factory=list)
  compile_time_s: dict = dataclasses.field(default_factory=dict)  # method -> seconds
  total_time_s: float = 0.0
  # Suites whose results are not "iterations until a metric falls below tol" render themselves:
  # render_markdown(suite) -> str replaces `markdown`, render_plot(suite, path) replaces `plot`.
  render_markdown: Optional[Callable] = None
  render_plot: Optional[Callable] = None


def _count(n: Optional[float]) -> str:
  return "-" if n is None else f"{int(n):,}"


def _number(x: Optional[float], spec: str) -> str:
  return "-" if x is None else format(x, spec)


def _cell(run: MethodRun, bound: Optional[int]) -> str:
  if not run.reached or run.steps is None:
    return "-"
  text = _count(run.steps)
  if bound:
    text += f" ({run.steps / bound:.2f}x)"
  return text


def summary_table(suite: SuiteResult) -> str:
  """Methods as rows, problems as columns, iterations to target (and / N_LB when known)."""
  problems = suite.problems
  header = "| method | needs | " + " | ".join(p.label for p in problems) + " |"
  lines = [header, "|" + "---|" * (len(problems) + 2)]
  if any(p.bound for p in problems):
    lines.append(
      "| first-order lower bound N_LB | — | " + " | ".join(_count(p.bound) for p in problems) + " |"
    )
  methods = list(dict.fromkeys(r.method for p in problems for r in p.runs))
  for method in methods:
    cells, needs = [], ""
    for p in problems:
      run = next((r for r in p.runs if r.method == method), None)
      if run is None:
        cells.append("n/a")
        continue
      needs = run.needs
      cell = _cell(run, p.bound)
      if run.note:
        cell += f" [{run.note}]"
      cells.append(cell)
    lines.append(f"| {method} | {needs} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def detail_table(problem: ProblemResult) -> str:
  lines = [
    "| method | iterations | / N_LB | grad evals | f evals | wall s | final metric | note |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in problem.runs:
    ratio = "-"
    if r.reached and r.steps is not None and problem.bound:
      ratio = f"{r.steps / problem.bound:.2f}"
    lines.append(
      f"| {r.method} | {_count(r.iterations)} | {ratio} | {_count(r.grad_evals)} | "
      f"{_count(r.function_evals)} | {_number(r.wall_time_s, '.3f')} | "
      f"{_number(r.final_metric, '.2e')} | {r.note} |"
    )
  return "\n".join(lines)


def markdown(suite: SuiteResult, heading_level: int = 2) -> str:
  h = "#" * heading_level
  parts = [
    f"{h} {suite.title}",
    "",
    suite.description.strip(),
    "",
    f"Iterations until {suite.metric_label} <= {suite.tol:g} "
    '("-": not reached within the cap; (Nx) = iterations / N_LB).',
    "",
    summary_table(suite),
    "",
  ]
  for note in suite.notes:
    parts.append(f"- {note}")
  if suite.notes:
    parts.append("")
  for p in suite.problems:
    parts += [
      f"{h}# {p.name} (cap {p.cap:,}" + (f", N_LB {p.bound:,}" if p.bound else "") + ")",
      "",
      detail_table(p),
      "",
    ]
  return "\n".join(parts + [footer(suite)]) + "\n"


def footer(suite: SuiteResult) -> str:
  """Compile time per method, the mode and the suite's wall time."""
  parts = []
  if suite.compile_time_s:
    parts.append(
      "Compile time per method (s, once per suite; every problem of one shape "
      "reuses it): " + ", ".join(f"{k} {v:.1f}" for k, v in suite.compile_time_s.items()) + "."
    )
    parts.append("")
  parts.append(
    f"Mode `{suite.mode}`, suite wall time {suite.total_time_s:.0f} s (compilation included)."
  )
  return "\n".join(parts)


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.bool_,)):
    return bool(x)
  return x


def to_json(suite: SuiteResult) -> dict:
  data = dataclasses.asdict(suite)
  data.pop("render_markdown")
  data.pop("render_plot")
  for problem in data["problems"]:
    for run in problem["runs"]:
      run["iterations"] = run["steps"] if run["reached"] else None
  return _jsonable(data)


def plot(suite: SuiteResult, path: str) -> None:
  """Log-scale metric vs iteration, one panel per problem, every method."""
  n = len(suite.problems)
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
  cmap = plt.get_cmap("tab20")
  methods = list(dict.fromkeys(r.method for p in suite.problems for r in p.runs))
  colors = {m: cmap(i % 20) for i, m in enumerate(methods)}
  for ax, p in zip(axes.flat, suite.problems):
    reached = [r.steps for r in p.runs if r.reached]
    recorded = max(len(r.history) * r.history_every for r in p.runs)
    xmax = min(p.cap, recorded, int(1.3 * max(reached)) if reached else p.cap)
    xmax = max(xmax, 10)
    for r in p.runs:
      values = np.array([np.nan if v is None else v for v in r.history], dtype=float)
      steps = np.arange(len(values)) * r.history_every
      keep = np.isfinite(values) & (steps <= xmax)
      if r.reached or r.steps < p.cap:  # close the curve at the stopping iterate
        steps = np.append(steps[keep], r.steps)
        values = np.append(values[keep], r.final_metric)
      else:
        steps, values = steps[keep], values[keep]
      ax.semilogy(steps, np.maximum(values, 1e-300), label=r.method, color=colors[r.method], lw=1.2)
    if p.bound_rate:
      k = np.linspace(0, xmax, 200)
      ax.semilogy(k, p.bound_rate**k, "k--", lw=1, label="lower bound q^k")
    ax.axhline(suite.tol, color="gray", lw=0.8, ls=":")
    ax.set_xlim(0, xmax)
    ax.set_ylim(max(suite.tol * 1e-2, 1e-16), 1e3)
    ax.set_title(p.name, fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_ylabel(suite.metric_label, fontsize=8)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(
    handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False
  )
  fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 4), 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(suite: SuiteResult, out_dir: str) -> str:
  """Writes <out>/<suite>.md, .json and .png; returns the markdown."""
  os.makedirs(out_dir, exist_ok=True)
  text = suite.render_markdown(suite) if suite.render_markdown else markdown(suite)
  with open(os.path.join(out_dir, f"{suite.name}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out_dir, f"{suite.name}.json"), "w") as f:
    json.dump(to_json(suite), f, indent=1)
  (suite.render_plot or plot)(suite, os.path.join(out_dir, f"{suite.name}.png"))
  return text
