"""The workloads suite's markdown and plot, from the result ``suite.run`` returns.

The markdown: the AlgoPerf score table, then per workload its target, every method's steps to
it and its curves' summary, and the checks (stopping signal, long run, robustness). The plot:
validation metric per workload, nag_optax's learning rates, the performance profiles and the
checks.
"""

import dataclasses
import datetime
import math
from typing import Any
from typing import Optional

import numpy as np

from benchmarks import report
from benchmarks.workloads import roster


@dataclasses.dataclass
class WorkloadsResult(report.SuiteResult):
  """``report.SuiteResult`` plus the per-workload detail and the AlgoPerf aggregate."""

  workloads: dict = dataclasses.field(default_factory=dict)
  aggregate: dict = dataclasses.field(default_factory=dict)
  parts_s: dict = dataclasses.field(default_factory=dict)
  settings: dict = dataclasses.field(default_factory=dict)


def _fmt(x: Optional[float], spec: str = ".3f") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return format(x, spec)


def _steps(x: Optional[float]) -> str:
  return "-" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def with_interval(x: Optional[float], interval: Optional[list], spec: str = ".2f") -> str:
  """``x [low, high]``, "-" for a miss or a bound that is one; ``x`` alone without an
  interval, and "-" alone for a miss on every resample."""
  if interval is None or not any(math.isfinite(v) for v in (x, *interval) if v is not None):
    return _fmt(x, spec)
  return f"{_fmt(x, spec)} [{_fmt(interval[0], spec)}, {_fmt(interval[1], spec)}]"


def score_table(suite: WorkloadsResult) -> list[str]:
  """Every method's score and time-to-target ratio per workload, best score first."""
  agg = suite.aggregate
  first = next(iter(suite.workloads.values()))["methods"]
  kinds = {n: e["kind"] for n, e in first.items()}
  labels = [res["label"] for res in suite.workloads.values()]
  lines = [
    "### AlgoPerf score",
    "",
    "Time-to-target ratio r = steps / fewest steps of any method on the workload "
    '("-" = miss); score = area under the performance profile on tau in [1, 4] / 3; each with '
    "its bootstrap interval over seeds, `x [low, high]`.",
    "",
    "| method | kind | score | " + " | ".join(labels) + " |",
    "|---|---|---|" + "---|" * len(labels),
  ]
  ratio_intervals = agg.get("ratio_intervals", {})
  score_intervals = agg.get("score_intervals", {})
  for n in sorted(first, key=lambda n: -agg["scores"][n]):
    cells = [
      with_interval(agg["ratios"][n][w], ratio_intervals.get(n, {}).get(w)) for w in suite.workloads
    ]
    score = with_interval(agg["scores"][n], score_intervals.get(n), ".3f")
    lines.append(f"| {n} | {kinds[n]} | {score} | " + " | ".join(cells) + " |")
  return lines + [""]


def corpus_line(info: dict) -> list[str]:
  """The LM's corpus: its size, files and SHA-256, and whether it is the pinned one."""
  if not info.get("sha256"):
    return []
  same = (
    "matches the pinned corpus."
    if info["sha_matches"]
    else f"**differs from the pinned `{info['pinned_sha256']}`** (another Python version): "
    "numbers are not comparable with runs on the pinned corpus."
  )
  return [
    f"Corpus: {info['chars']:,} bytes from {info['files']} files, SHA-256 `{info['sha256']}` — "
    + same,
    "",
  ]


def methods_table(res: dict) -> list[str]:
  """Every method on one workload: steps to the target and the summary of its best curve."""
  lines = [
    "| method | lr | steps to target (per seed) | vs target setter | val metric at B | "
    "at 1.5 B | val loss (end) | train loss (last block) | train loss (evaluated, end) | "
    "ms/step | final lr |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for n, e in res["methods"].items():
    vs = with_interval(e["vs_setter"], e.get("vs_setter_interval"))
    v = e["reported"]
    per_seed = ", ".join(_steps(s) for s in e["per_seed_steps"])
    lr = _fmt(e["lr"], "g") if e["kind"] == "baseline" else "—"
    final_lr = ""
    if "final_lr" in e:
      final_lr = f"{e['final_lr']:.2e}" + (" **at floor**" if e["lr_at_floor"] else "")
    lines.append(
      f"| {n} | {lr} | {_steps(e['steps_to_target'])} ({per_seed}) | "
      f"{vs} | {_fmt(v['metric_at_B'], '.4f')} | "
      f"{_fmt(v['metric_at_1_5B'], '.4f') if e['kind'] != 'baseline' else '—'} | "
      f"{_fmt(v['final_val_loss'], '.4f')} | {_fmt(v['final_train_loss'], '.4f')} | "
      f"{_fmt(v.get('final_train_loss_evaluated', math.nan), '.4f')} | "
      f"{e['ms_per_step']:.2f} | {final_lr} |"
    )
  return lines


def stop_rows(stop: dict) -> list[str]:
  """The stopping-signal table of a workload, with a warning under it for every reference lane
  that stopped: its best step is then a lower bound and the stop is judged against too little."""
  first = next(iter(stop.values()))
  options = first.get("options", {"patience": first["patience"]})
  parts = [
    "",
    "Stopping signal (criteria enabled: "
    + ", ".join(f"`{k}={v!r}`" for k, v in options.items())
    + ", in steps): first step where "
    "`should_stop(state)` holds; the step of the best validation metric of the same "
    "optimizer without the stop (a second lane of the same program, same seeds and "
    "batches, whose patience the run never reaches: the same arithmetic up to the stop); "
    "and the metric lost by stopping (the stopped lane's best up to the stop against the "
    "unstopped lane's best, relative), per seed; stop / best: the stop step (the end of "
    "the run if it never stopped) over the best step.",
    "",
    "| method | reads validation_loss | stop step | best step | stop / best | lost |",
    "|---|---|---|---|---|---|",
  ]
  for n, s in stop.items():
    ps = s["per_seed"]
    parts.append(
      f"| {n} | {'yes' if s['reads_validation_loss'] else 'no'} | "
      + ", ".join(_steps(p["stop_step"]) if p["stop_step"] else "never" for p in ps)
      + " | "
      + ", ".join(_steps(p["best_step"]) for p in ps)
      + " | "
      + ", ".join(_fmt(p["stop_over_best"], ".2f") for p in ps)
      + " | "
      + ", ".join(_fmt(100 * p["relative_loss"], ".2f") + "%" for p in ps)
      + " |"
    )
  stopped = [n for n, s in stop.items() if not s.get("reference_never_stopped", True)]
  if stopped:
    parts += [
      "",
      "**Warning:** the never-stopping reference lane stopped within the run for "
      + ", ".join(stopped)
      + ": its best step is a lower bound, and the stop is judged against too little.",
    ]
  return parts


def long_run_rows(long_run: dict, metric: str) -> list[str]:
  """The long run's table: where the training loss and the learning rate end."""
  steps = next(iter(long_run.values()))["steps"]
  lines = [
    "",
    f"Long run: {steps:,} steps at the defaults (nothing tuned), median over "
    "seeds. Training loss (mean over an evaluation block) at 20% / 50% / the end of "
    "the run; late / early = mean training loss over the last fifth over that of "
    "the second fifth (below 1: still falling); final validation "
    f"{metric}; the learning rate at the end against its largest.",
    "",
    "| method | train loss 20% | 50% | end | late / early | final val | final lr (max) |",
    "|---|---|---|---|---|---|---|",
  ]
  for n, r in long_run.items():
    c = r["train_loss_curve"]
    rate = f"{r['final_lr']:.2e} ({r['max_lr']:.2e})" if r["final_lr"] is not None else "—"
    lines.append(
      f"| {n} | {c[len(c) // 5 - 1]:.2e} | {c[len(c) // 2 - 1]:.2e} | "
      f"{c[-1]:.2e} | {r['late_over_early']:.2f} | {r['final_metric']:.4f} | "
      f"{rate} |"
    )
  return lines


def robustness_rows(robust: dict, metric: str) -> list[str]:
  """The robustness table: the final metric from each initial learning rate."""
  lrs = roster.ROBUST_LRS
  lines = [
    "",
    f"Robustness: final validation {metric} (median over seeds) from each initial learning rate.",
    "",
    "| method | " + " | ".join(f"{x:g}" for x in lrs) + " | spread | worst vs best |",
    "|---|" + "---|" * (len(lrs) + 2),
  ]
  for n, r in robust.items():
    lines.append(
      f"| {n} | "
      + " | ".join(_fmt(x, ".4f") for x in r["final"])
      + f" | {_fmt(r['spread'], '.4f')} | "
      f"{_fmt(100 * r['worst_relative'], '.1f')}% |"
    )
  return lines


def seeds_label(res: dict) -> str:
  """The seeds of a workload's rows, for its heading."""
  if res.get("peer_seeds", res["seeds"]) == res["seeds"]:
    return f"{res['seeds']} seed(s)"
  return f"{res['seeds']} seeds, peers {res['peer_seeds']}"


def target_line(res: dict) -> str:
  """The target, who set it, the validation split's size and, for an accuracy, its binomial
  standard error and one sample's weight."""
  hib = res["higher_is_better"]
  line = f"Target: validation {res['metric']} {'>=' if hib else '<='} {res['target']:.4f}"
  if "target_standard_error" in res:
    line += (
      f" (binomial standard error {100 * res['target_standard_error']:.2f}% on "
      f"{res['validation_samples']:,} validation samples, one sample "
      f"{100 * res['one_sample']:.3f}%)"
    )
  elif "validation_samples" in res:
    line += f" (on {res['validation_samples']:,} validation windows)"
  return line + f", set by {res['target_set_by']}. Wall time {res['wall_s']:.0f} s."


def workload_section(res: dict) -> list[str]:
  """One workload: its target, its methods, and the checks it ran."""
  parts = [
    f"### {res['label']} (B = {res['budget']:,}, evaluation every "
    f"{res['eval_every']} steps, {seeds_label(res)})",
    "",
    target_line(res),
    "",
  ]
  parts += corpus_line(res["info"])
  parts += methods_table(res)
  if res["stop"]:
    parts += stop_rows(res["stop"])
  if "long_run" in res:
    parts += long_run_rows(res["long_run"], res["metric"])
  if "robust" in res:
    parts += robustness_rows(res["robust"], res["metric"])
  return parts + [""]


def _workloads_result(suite: report.SuiteResult) -> WorkloadsResult:
  if not isinstance(suite, WorkloadsResult):
    raise TypeError(f"the workloads renderer needs a WorkloadsResult, not {type(suite).__name__}")
  return suite


def render_markdown(suite: report.SuiteResult) -> str:
  """The suite's section: description, score table, one section per workload, notes, times."""
  suite = _workloads_result(suite)
  parts = [f"## {suite.title}", "", suite.description.strip(), ""]
  parts += score_table(suite)
  for res in suite.workloads.values():
    parts += workload_section(res)
  parts += ["### Notes", ""] + [f"- {n}" for n in suite.notes] + [""]
  parts += [
    "Wall time of each part (s, compilation included; the workloads run in parallel "
    "worker processes, one per core, so the parts add up to more than the suite's wall "
    "time): " + "; ".join(f"{k} {v:.0f}" for k, v in suite.parts_s.items()) + ".",
    "",
    f"Mode `{suite.mode}`, {datetime.date.today().isoformat()}, suite wall time "
    f"{suite.total_time_s:.0f} s ({suite.total_time_s / 60:.1f} min).",
    "",
  ]
  return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Plot.


def _colors(suite: WorkloadsResult) -> dict[str, Any]:
  """A colour per method: tab20 for the others, a few strong ones for nag_optax's."""
  plt = report.plt
  cmap = plt.get_cmap("tab20")
  names = list(suite.aggregate["scores"])
  kinds = {m: e["kind"] for res in suite.workloads.values() for m, e in res["methods"].items()}
  others = [m for m in names if kinds.get(m) != "nag_optax"]
  colors: dict[str, Any] = {m: cmap(i % 20) for i, m in enumerate(others)}
  nag_colors = ("black", "tab:red", "tab:purple", "tab:olive", "tab:cyan")
  nag = [m for m in names if kinds.get(m) == "nag_optax"]
  colors.update({m: nag_colors[i % len(nag_colors)] for i, m in enumerate(nag)})
  return colors


def _plot_curves(ax: Any, res: dict, colors: dict) -> None:
  """The median validation metric of every method's best grid value, with the target and B."""
  for m, e in res["methods"].items():
    curve = np.asarray(e["reported"]["median_metric_curve"], float)
    ax.plot(
      (np.arange(len(curve)) + 1) * res["eval_every"],
      curve,
      color=colors[m],
      lw=1.6 if e["kind"] == "nag_optax" else 0.9,
      ls="-" if e["kind"] != "baseline" else "--",
      label=m,
    )
  ax.axhline(res["target"], color="k", lw=0.8, ls=":")
  ax.axvline(res["budget"], color="gray", lw=0.6)
  finite = [
    x
    for e in res["methods"].values()
    for x in e["reported"]["median_metric_curve"]
    if np.isfinite(x)
  ]
  if finite and res["higher_is_better"]:
    ax.set_ylim(max(min(finite), res["target"] - 0.25), min(1.0, res["target"] + 0.05))
  elif finite:
    ax.set_ylim(res["target"] - 0.3, res["target"] + 1.5)
  ax.set_title(f"{res['label']}: validation {res['metric']}", fontsize=9)
  ax.set_xlabel("step")


def _plot_learning_rates(ax: Any, res: dict, colors: dict) -> None:
  for m, e in res["methods"].items():
    lr = e["reported"]["lr_curve"]
    if e["kind"] == "nag_optax" and lr is not None:
      lr = np.asarray(lr, float)
      ax.semilogy((np.arange(len(lr)) + 1) * res["eval_every"], lr, color=colors[m], label=m)
  ax.set_title(f"{res['label']}: nag_optax learning rate", fontsize=9)
  ax.set_xlabel("step")
  ax.legend(fontsize=6)


def _plot_profiles(ax: Any, suite: WorkloadsResult, colors: dict) -> None:
  agg = suite.aggregate
  for m in agg["scores"]:
    ax.step(
      agg["taus"],
      agg["profiles"][m],
      where="post",
      color=colors[m],
      label=f"{m} ({agg['scores'][m]:.2f})",
    )
  ax.set_xlabel("tau")
  ax.set_ylabel("rho(tau): fraction of workloads")
  ax.set_title("performance profiles (score)", fontsize=9)
  ax.set_ylim(-0.02, 1.02)


def _plot_robustness(ax: Any, res: dict, colors: dict) -> None:
  for m, r in res["robust"].items():
    ax.semilogx(roster.ROBUST_LRS, r["final"], "o-", color=colors[m], label=m)
  ax.set_xlabel("initial learning rate")
  ax.set_title(f"{res['label']}: final validation {res['metric']}", fontsize=9)
  ax.legend(fontsize=6)


def _plot_long_run(ax: Any, res: dict, colors: dict) -> None:
  for m, r in res["long_run"].items():
    c = np.asarray(r["train_loss_curve"], float)
    steps = (np.arange(len(c)) + 1) * r["eval_every"]
    ax.semilogy(steps, c, color=colors.get(m, "tab:gray"), lw=1.4, label=m)
  ax.set_xlabel("step")
  ax.set_title(f"{res['label']}: training loss over a long run (defaults)", fontsize=9)
  ax.legend(fontsize=6)


def render_plot(suite: report.SuiteResult, path: str) -> None:
  """Row 1: validation metric per workload; row 2: nag_optax learning rates; row 3: the
  performance profiles, the robustness finals and the long run."""
  suite = _workloads_result(suite)
  plt = report.plt
  n = len(suite.workloads)
  fig, axes = plt.subplots(3, n, figsize=(4.6 * n, 11.5), squeeze=False)
  colors = _colors(suite)
  for col, res in enumerate(suite.workloads.values()):
    _plot_curves(axes[0, col], res, colors)
    _plot_learning_rates(axes[1, col], res, colors)
  _plot_profiles(axes[2, 0], suite, colors)
  checks = [(_plot_robustness, res) for res in suite.workloads.values() if "robust" in res]
  checks += [(_plot_long_run, res) for res in suite.workloads.values() if "long_run" in res]
  col = 1
  for plot, res in checks[: n - 1]:
    plot(axes[2, col], res, colors)
    col += 1
  for ax in list(axes[2, col:]):
    ax.axis("off")
  handles, labels = axes[2, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)
