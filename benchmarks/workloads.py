"""Workloads suite: AlgoPerf-style deep-learning benchmark on five small Flax NNX workloads.

Replaces the old ``minibatch`` suite (its MLP and CNN are workloads 1 and 2, on a new split).
Tuned baselines (AdamW, NAdamW, Nesterov SGD with warm-up + cosine decay, best of an lr grid,
budget B) set a target per workload (median over seeds of the best validation metric of the
best baseline); the self-tuning peers at their published defaults and nag_optax's tuning-free
optimizers, called with no argument, get 1.5 B. Reported: steps to the target, the AlgoPerf
performance profile and score, nag_optax's learning-rate trajectories, robustness to the initial
rate, and the stopping signal. Data, models and the training scan are in
``benchmarks/workloads_core.py``; the scoring maths in ``benchmarks/algoperf.py``.
"""

import concurrent.futures
import dataclasses
import datetime
import inspect
import math
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from benchmarks import algoperf
from benchmarks import methods
from benchmarks import report
from benchmarks import workloads_core as core

# mode -> seeds, lr grid size, evaluations per budget (every B / evals steps), {workload: B},
# the workloads with the robustness and stopping-signal parts (None: all).
# Full-mode budgets: where the tuned baselines have converged (the LM: budget-limited; a
# character LM keeps improving slowly), sized for ~40 min on 2 idle CPU cores. Per workload the
# full mode runs ~118 B lane-steps (45 B baselines: 3 x 5 lr x 3 seeds; 54 B self-tuning: 12 x 3
# seeds x 1.5 B; 13.5 B stopping; 6 B timing) plus 81 B for robustness (3 x 6 lr x 3 seeds x
# 1.5 B) and ~36 compilations. Measured on one core (ms per lane-step, compile s per program):
# digits MLP 0.1 / 1.2, digits CNN 3.8 / 3, MNIST-1D CNN 2.0 / 3, ResNet 4.5 / 4.5, LM 12 / 5,
# so about 70, 380, 600, 590 and 1030 s per workload: ~24 min on two worker processes.
SETTINGS = {
  "smoke": dict(
    seeds=1,
    grid="short",
    evals=10,
    budgets=dict(digits_mlp=40, digits_cnn=20, mnist1d_cnn=40, mnist1d_resnet=20, stdlib_lm=20),
    robust=("digits_mlp",),
    stop=("digits_mlp",),
  ),
  "quick": dict(
    seeds=1,
    grid="short",
    evals=10,
    budgets=dict(digits_mlp=300, digits_cnn=100, mnist1d_cnn=300, mnist1d_resnet=120, stdlib_lm=60),
    robust=("digits_mlp",),
    stop=("digits_mlp",),
  ),
  "full": dict(
    seeds=3,
    grid="long",
    evals=40,
    budgets=dict(
      digits_mlp=1000, digits_cnn=600, mnist1d_cnn=1200, mnist1d_resnet=800, stdlib_lm=600
    ),
    robust=("digits_mlp", "mnist1d_cnn"),
    stop=None,
  ),  # None: every workload
}
# XLA:CPU compilation of the ~90 small programs dominates the quick mode; LLVM's expensive
# passes buy little on these tiny kernels.
COMPILER_OPTIONS = {"xla_llvm_disable_expensive_passes": True}
SELF_TUNING_FACTOR = 1.5
# The long Adam grid reaches 0.1: with 0.03 at its top, the tuned Adam-type baselines chose the
# edge on the two CNNs, so their targets could be understated.
ADAM_GRID = {"long": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "short": (1e-3, 3e-3, 1e-2)}
SGD_GRID = {"long": (0.01, 0.03, 0.1, 0.3, 1.0), "short": (0.03, 0.1, 0.3)}
WARMUP_FRACTION = 0.05
ROBUST_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# The validation patience as a fraction of B, the patience guide.md recommends (about 30% of the
# planned run): chosen on seeds 10-14, never the suite's own (`python -m benchmarks.stop_patience`,
# benchmarks/README.md).
STOP_PATIENCE_FRACTION = 0.3
# A whole long run at the defaults, where a collapsing rate shows (the old auto_nag_sgd froze from
# step ~1,000 and sat at its 1e-8 floor by 2,500-4,000 on digits MLPs).
LONG_RUN_WORKLOAD = "digits_mlp"
LONG_RUN_STEPS = {
  "smoke": 400,
  "quick": 2_000,
  "full": 10_000,
}
TIMED_BLOCKS = 4  # the single-seed run that measures ms/step (full mode): 4 evaluation blocks
TIMING_REPEATS = 3

AUTO_SGD = "nag_optax.auto_nag_sgd()"
AUTO_NADAMW = "nag_optax.auto_nadamw()"


def _schedule_free_eval(params, state):
  return optax.contrib.schedule_free_eval_params(state, params)


def nag_factories() -> dict:
  """name -> factory(**kwargs): every tuning-free nag_optax optimizer."""
  return {AUTO_SGD: nag_optax.auto_nag_sgd, AUTO_NADAMW: nag_optax.auto_nadamw}


def _call(factory, learning_rate=None):
  """``factory()``, or from another initial rate, ``factory(learning_rate=...)`` (keyword-only)."""
  return factory() if learning_rate is None else factory(learning_rate=learning_rate)


def _stop_config(factory) -> tuple:
  """(make(patience) -> optimizer, reads validation_loss): the criteria a user would enable."""
  try:
    params = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    params = {}
  if "validation_patience" in params:
    return (lambda p: factory(validation_patience=p)), True
  return (lambda p: factory(patience=p)), False


# method name -> factory(patience in steps) -> optimizer, with its stopping criteria enabled.
STOP_CONFIGS = {name: _stop_config(f)[0] for name, f in nag_factories().items()}
STOP_READS_VALIDATION = {name: _stop_config(f)[1] for name, f in nag_factories().items()}


def _baseline(name, opt):
  def make(lr, budget):
    # lr x the unit schedule: optax's schedule branches on a concrete peak value, lr is traced.
    unit = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, max(1, int(WARMUP_FRACTION * budget)), budget, end_value=0.0
    )
    return opt(lambda count: lr * unit(count))

  return methods.Method(name, make, needs="tuning", kind="baseline")


def all_methods() -> list:
  """Every row, as ``methods.Method(name, make(lr, budget) -> optimizer, kind=...)``: ``lr`` is
  traced (a grid value) or None; kind "baseline" (tuned, budget B), "peer" or "nag_optax"
  (self-tuning, 1.5 B)."""
  out = [
    _baseline("optax.adamw (tuned)", optax.adamw),
    _baseline("optax.nadamw (tuned)", optax.nadamw),
    _baseline(
      "optax.sgd nesterov 0.9 (tuned)", lambda s: optax.sgd(s, momentum=0.9, nesterov=True)
    ),
  ]
  c = optax.contrib
  peers = [
    ("optax.contrib.prodigy()", c.prodigy, None),
    ("optax.contrib.dadapt_adamw()", c.dadapt_adamw, None),
    ("optax.contrib.dog()", c.dog, None),
    ("optax.contrib.mechanize(optax.adamw(1e-3))", lambda: c.mechanize(optax.adamw(1e-3)), None),
    ("optax.contrib.cocob()", c.cocob, None),
    ("optax.contrib.schedule_free_adamw()", c.schedule_free_adamw, _schedule_free_eval),
    ("optax.contrib.schedule_free_sgd()", c.schedule_free_sgd, _schedule_free_eval),
    ("optax.contrib.momo()", c.momo, None),
    ("optax.contrib.momo_adam()", c.momo_adam, None),
  ]
  out += [
    methods.Method(n, (lambda factory: lambda lr, b: factory())(f), kind="peer", eval_params=e)
    for n, f, e in peers
  ]
  out += [
    methods.Method(n, (lambda factory: lambda lr, b: _call(factory, lr))(f), kind="nag_optax")
    for n, f in nag_factories().items()
  ]
  return out


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class _Timer:
  def __init__(self):
    self.parts = {}

  def add(self, part, seconds):
    self.parts[part] = self.parts.get(part, 0.0) + seconds


def _run_grid(wl, trainer, params, batches, grid) -> tuple:
  """Every grid value x every seed in one jitted call; (numpy dict, seconds, run-only seconds)."""
  many = jax.jit(jax.vmap(jax.vmap(trainer, in_axes=(0, 0, None)), in_axes=(None, None, 0)))
  t0 = time.perf_counter()
  compiled = many.lower(params, batches, jnp.asarray(grid, jnp.float32)).compile(COMPILER_OPTIONS)
  t1 = time.perf_counter()
  out = jax.device_get(compiled(params, batches, jnp.asarray(grid, jnp.float32)))
  t2 = time.perf_counter()
  return {k: np.asarray(v) for k, v in out.items()}, t2 - t0, t2 - t1


def _time_step(wl, method, budget, eval_every, params, batches, lr) -> float:
  """ms/step: best of a few short single-seed jitted runs (after compilation)."""
  trainer = core.make_trainer(
    wl, lambda h: method.make(h, budget), TIMED_BLOCKS, eval_every, eval_params=method.eval_params
  )
  p0 = jax.tree.map(lambda a: a[0], params)
  b0 = batches[0, : TIMED_BLOCKS * eval_every]
  hyper = jnp.float32(lr)
  one = jax.jit(trainer).lower(p0, b0, hyper).compile(COMPILER_OPTIONS)
  jax.block_until_ready(one(p0, b0, hyper))
  times = []
  for _ in range(TIMING_REPEATS):
    t0 = time.perf_counter()
    jax.block_until_ready(one(p0, b0, hyper))
    times.append(time.perf_counter() - t0)
  return 1e3 * min(times) / (TIMED_BLOCKS * eval_every)


def _summary(wl, out_lane, eval_every, budget) -> dict:
  """Per-seed curves of one grid value -> medians and per-seed detail."""
  metric = out_lane["metric"]  # (seeds, blocks)
  at = lambda step: (
    float(np.median(metric[:, step // eval_every - 1]))
    if step // eval_every <= metric.shape[1]
    else math.nan
  )
  lr = out_lane["lr"]
  return dict(
    metric_curves=metric.tolist(),
    median_metric_curve=np.median(metric, 0).tolist(),
    val_loss_curve=np.median(out_lane["val_loss"], 0).tolist(),
    best_per_seed=[algoperf.best_of_run(c, wl.higher_is_better) for c in metric],
    median_best=algoperf.median_best(metric, wl.higher_is_better),
    metric_at_B=at(budget),
    metric_at_1_5B=at(int(SELF_TUNING_FACTOR * budget)),
    final_metric=float(np.median(metric[:, -1])),
    final_val_loss=float(np.median(out_lane["val_loss"][:, -1])),
    final_train_loss=float(np.median(out_lane["train_loss"][:, -1])),
    final_train_loss_evaluated=float(np.median(out_lane["train_loss_eval"][:, -1])),
    lr_curve=(np.nanmedian(lr, 0).tolist() if np.isfinite(lr).any() else None),
  )


def _run_workload(name, settings, mode, progress, timer) -> dict:
  t0 = time.perf_counter()
  wl = core.WORKLOADS[name]()
  budget = settings["budgets"][name]
  eval_every = max(1, budget // settings["evals"])
  blocks_b = budget // eval_every
  blocks_st = int(SELF_TUNING_FACTOR * budget) // eval_every
  seeds = settings["seeds"]
  steps_st = blocks_st * eval_every
  params = _stack([wl.init_params(s)[1] for s in range(seeds)])
  batches = jnp.stack([jnp.asarray(wl.batch_indices(s, steps_st)) for s in range(seeds)])
  timer.add(f"{name}: data and init", time.perf_counter() - t0)
  res = dict(
    methods={},
    budget=budget,
    eval_every=eval_every,
    seeds=seeds,
    info=wl.info,
    label=wl.label,
    metric=wl.metric,
    higher_is_better=wl.higher_is_better,
  )
  for m in all_methods():
    progress.set_postfix_str(f"{name}: {m.name[:40]}")
    if m.kind == "baseline":
      grid = ADAM_GRID[settings["grid"]] if "adam" in m.name else SGD_GRID[settings["grid"]]
      blocks = blocks_b
    else:
      grid, blocks = (math.nan,), blocks_st
    make = (
      (lambda mm: lambda h: mm.make(h, budget))(m)
      if m.kind == "baseline"
      else (lambda mm: lambda h: mm.make(None, budget))(m)
    )
    trainer = core.make_trainer(wl, make, blocks, eval_every, eval_params=m.eval_params)
    out, seconds, run_s = _run_grid(wl, trainer, params, batches[:, : blocks * eval_every], grid)
    timer.add(f"{name}: {'tuned baselines' if m.kind == 'baseline' else 'self-tuning'}", seconds)
    values = [
      _summary(wl, {k: v[i] for k, v in out.items()}, eval_every, budget) for i in range(len(grid))
    ]
    pick = max if wl.higher_is_better else min
    best = pick(
      range(len(grid)),
      key=lambda i: (
        values[i]["median_best"]
        if np.isfinite(values[i]["median_best"])
        else (-math.inf if wl.higher_is_better else math.inf)
      ),
    )
    entry = dict(
      kind=m.kind,
      grid=list(grid),
      values=values,
      best=best,
      lr=grid[best],
      grid_wall_s=seconds,
      grid_run_s=run_s,
      steps=blocks * eval_every,
    )
    t1 = time.perf_counter()
    if mode == "full":
      entry["ms_per_step"] = _time_step(
        wl, m, budget, eval_every, params, batches, grid[best] if m.kind == "baseline" else 0.0
      )
      entry["ms_rule"] = "best of 3 single-seed runs"
    else:  # one run, all lanes: run time / (steps x lanes)
      entry["ms_per_step"] = 1e3 * run_s / (blocks * eval_every * seeds * len(grid))
      entry["ms_rule"] = "one vmapped run / lanes"
    timer.add(f"{name}: ms/step timing", time.perf_counter() - t1)
    res["methods"][m.name] = entry
    progress.update(1)

  # Target (AlgoPerf): best baseline at its best lr, median over seeds of the best of the run.
  baselines = {
    n: e["values"][e["best"]]["metric_curves"]
    for n, e in res["methods"].items()
    if e["kind"] == "baseline"
  }
  res["target"], res["target_set_by"] = algoperf.target(baselines, wl.higher_is_better)
  for n, e in res["methods"].items():
    v = e["values"][e["best"]]
    cap = budget if e["kind"] == "baseline" else steps_st
    e["per_seed_steps"] = [
      algoperf.steps_to_target(c, res["target"], eval_every, wl.higher_is_better)
      for c in v["metric_curves"]
    ]
    e["per_seed_steps"] = [s if s <= cap else math.inf for s in e["per_seed_steps"]]
    e["steps_to_target"] = float(np.median(e["per_seed_steps"]))
    if e["kind"] == "nag_optax" and v["lr_curve"] is not None:
      e["lr_at_floor"] = algoperf.lr_at_floor(v["lr_curve"])
      e["final_lr"] = v["lr_curve"][-1]

  # The stopping signal, with the criteria a user would enable.
  patience = max(eval_every, int(STOP_PATIENCE_FRACTION * budget))
  res["stop"] = {}
  stop_workloads = settings["stop"]
  for n, make_stop in (
    STOP_CONFIGS.items() if stop_workloads is None or name in stop_workloads else ()
  ):
    progress.set_postfix_str(f"{name}: stop {n[:30]}")
    t1 = time.perf_counter()
    reads_val = STOP_READS_VALIDATION[n]
    # Two lanes of one program, same seeds and batches: the patience, and one the run never
    # reaches. The never-stopping lane is the reference (the stopped lane freezes its params at
    # the stop, so it cannot show what the rest of the run would have reached); until the stop
    # both lanes do the same arithmetic, so the comparison carries no rounding drift (a run
    # compiled separately drifts by about 1% on the MNIST-1D workloads).
    never = blocks_st * eval_every + 1
    trainer = core.make_trainer(
      wl,
      lambda h, make_stop=make_stop: make_stop(h.astype(jnp.int32)),
      blocks_st,
      eval_every,
      record_stop=True,
      pass_validation_loss=reads_val,
    )
    out, seconds, _ = _run_grid(wl, trainer, params, batches, (patience, never))
    timer.add(f"{name}: stopping signal", time.perf_counter() - t1)
    per_seed = [
      algoperf.stop_outcome(
        out["metric"][0, s],
        int(out["stop"][0, s]) if int(out["stop"][0, s]) > 0 else None,
        out["metric"][1, s],
        eval_every,
        wl.higher_is_better,
      )
      for s in range(seeds)
    ]
    res["stop"][n] = dict(
      patience=patience,
      reads_validation_loss=reads_val,
      per_seed=per_seed,
      wall_s=seconds,
      reference_never_stopped=bool(np.all(out["stop"][1] < 0)),
    )
    progress.update(1)

  # Robustness to the initial learning rate.
  if name in settings["robust"]:
    res["robust"] = {}
    for n, f in nag_factories().items():
      progress.set_postfix_str(f"{name}: robustness {n[:30]}")
      trainer = core.make_trainer(wl, (lambda ff: lambda h: _call(ff, h))(f), blocks_st, eval_every)
      out, seconds, _ = _run_grid(wl, trainer, params, batches, ROBUST_LRS)
      timer.add(f"{name}: robustness", seconds)
      finals = [float(np.median(out["metric"][i, :, -1])) for i in range(len(ROBUST_LRS))]
      lr_curves = [
        np.nanmedian(out["lr"][i], 0).tolist() if np.isfinite(out["lr"][i]).any() else None
        for i in range(len(ROBUST_LRS))
      ]
      clean = [
        x if np.isfinite(x) else (-math.inf if wl.higher_is_better else math.inf) for x in finals
      ]
      best, worst = (max(clean), min(clean)) if wl.higher_is_better else (min(clean), max(clean))
      res["robust"][n] = dict(
        final=finals,
        lr_curves=lr_curves,
        spread=abs(best - worst),
        worst_relative=algoperf.relative_loss(worst, best, wl.higher_is_better)
        if np.isfinite(worst)
        else math.inf,
      )
      progress.update(1)
  if name == LONG_RUN_WORKLOAD and mode in LONG_RUN_STEPS:
    res["long_run"] = _long_run(wl, seeds, LONG_RUN_STEPS[mode], progress, timer)
  res["wall_s"] = time.perf_counter() - t0
  return res


def long_run_methods() -> dict:
  """Untuned defaults a new user would try, over a whole long run: name -> factory()."""
  out = {n: (lambda factory: lambda: _call(factory))(f) for n, f in nag_factories().items()}
  out["optax.contrib.prodigy()"] = optax.contrib.prodigy
  out["optax.adamw(1e-3)"] = lambda: optax.adamw(1e-3)
  out["optax.sgd(0.1, 0.9, nesterov=True)"] = lambda: optax.sgd(0.1, 0.9, nesterov=True)
  return out


def _long_run(wl, seeds, steps, progress, timer) -> dict:
  """Every long-run method for ``steps`` steps at its defaults: does the training loss keep
  falling, and where does the learning rate end?"""
  eval_every = steps // 40
  params = _stack([wl.init_params(s)[1] for s in range(seeds)])
  batches = jnp.stack([jnp.asarray(wl.batch_indices(s, steps)) for s in range(seeds)])
  out_all = {}
  for n, f in long_run_methods().items():
    progress.set_postfix_str(f"{wl.name}: long run {n[:30]}")
    trainer = core.make_trainer(wl, (lambda ff: lambda h: ff())(f), steps // eval_every, eval_every)
    out, seconds, _ = _run_grid(wl, trainer, params, batches, (math.nan,))
    timer.add(f"{wl.name}: long run", seconds)
    train = np.median(out["train_loss"][0], 0)  # (blocks,)
    blocks = len(train)
    early = float(np.mean(train[blocks // 5 : 2 * blocks // 5]))
    late = float(np.mean(train[4 * blocks // 5 :]))
    lr = np.nanmedian(out["lr"][0], 0) if np.isfinite(out["lr"][0]).any() else None
    out_all[n] = dict(
      train_loss_curve=train.tolist(),
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
  return out_all


# ---------------------------------------------------------------------------------------------
# Report.


@dataclasses.dataclass
class WorkloadsResult(report.SuiteResult):
  """SuiteResult plus the per-workload detail and the AlgoPerf aggregate."""

  workloads: dict = dataclasses.field(default_factory=dict)
  aggregate: dict = dataclasses.field(default_factory=dict)
  parts_s: dict = dataclasses.field(default_factory=dict)
  settings: dict = dataclasses.field(default_factory=dict)


def aggregate(workloads: dict) -> dict:
  """Ratios, performance profiles and scores over every method and workload."""
  steps = {}
  for w, res in workloads.items():
    for n, e in res["methods"].items():
      steps.setdefault(n, {})[w] = e["steps_to_target"]
  r = algoperf.ratios(steps)
  taus = np.linspace(1.0, algoperf.TAU_MAX, 121)
  return dict(
    ratios=r,
    taus=taus.tolist(),
    profiles={n: algoperf.profile(v, taus).tolist() for n, v in r.items()},
    scores={n: algoperf.score(v) for n, v in r.items()},
  )


def _fmt(x, spec=".3f"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return format(x, spec)


def _steps(x):
  return "-" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _stop_rows(stop: dict) -> list:
  """The stopping-signal table of a workload, with a warning under it for every reference lane
  that stopped: its best step is then a lower bound and the stop is judged against too little."""
  parts = [
    "",
    "Stopping signal (criteria enabled, patience "
    f"{next(iter(stop.values()))['patience']} steps): first step where "
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


def render_markdown(suite: WorkloadsResult) -> str:
  parts = [f"## {suite.title}", "", suite.description.strip(), ""]
  agg = suite.aggregate
  names = list(next(iter(suite.workloads.values()))["methods"])
  kinds = {n: e["kind"] for n, e in next(iter(suite.workloads.values()))["methods"].items()}
  labels = [res["label"] for res in suite.workloads.values()]
  parts += [
    "### AlgoPerf score",
    "",
    "Time-to-target ratio r = steps / fewest steps of any method on the workload "
    '("-" = miss); score = area under the performance profile on tau in [1, 4] / 3.',
    "",
    "| method | kind | score | " + " | ".join(labels) + " |",
    "|---|---|---|" + "---|" * len(labels),
  ]
  for n in sorted(names, key=lambda n: -agg["scores"][n]):
    cells = [_fmt(agg["ratios"][n][w], ".2f") for w in suite.workloads]
    parts.append(f"| {n} | {kinds[n]} | {agg['scores'][n]:.3f} | " + " | ".join(cells) + " |")
  parts.append("")
  for w, res in suite.workloads.items():
    hib = res["higher_is_better"]
    parts += [
      f"### {res['label']} (B = {res['budget']:,}, evaluation every "
      f"{res['eval_every']} steps, {res['seeds']} seed(s))",
      "",
      f"Target: validation {res['metric']} {'>=' if hib else '<='} "
      f"{res['target']:.4f}, set by {res['target_set_by']}. "
      f"Wall time {res['wall_s']:.0f} s.",
      "",
    ]
    if res["info"].get("sha256"):
      i = res["info"]
      parts += [
        f"Corpus: {i['chars']:,} bytes from {i['files']} files, SHA-256 "
        f"`{i['sha256']}` — "
        + (
          "matches the pinned corpus."
          if i["sha_matches"]
          else f"**differs from the pinned `{i['pinned_sha256']}`** "
          "(another Python version): numbers are not comparable "
          "with runs on the pinned corpus."
        ),
        "",
      ]
    parts += [
      "| method | lr | steps to target (per seed) | vs target setter | val metric at B | "
      "at 1.5 B | val loss (end) | train loss (last block) | train loss (evaluated, end) | "
      "ms/step | final lr |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    setter_steps = res["methods"][res["target_set_by"]]["steps_to_target"]
    for n, e in res["methods"].items():
      vs = e["steps_to_target"] / setter_steps if setter_steps > 0 else math.inf
      v = e["values"][e["best"]]
      per_seed = ", ".join(_steps(s) for s in e["per_seed_steps"])
      lr = _fmt(e["lr"], "g") if e["kind"] == "baseline" else "—"
      final_lr = ""
      if "final_lr" in e:
        final_lr = f"{e['final_lr']:.2e}" + (" **at floor**" if e["lr_at_floor"] else "")
      parts.append(
        f"| {n} | {lr} | {_steps(e['steps_to_target'])} ({per_seed}) | "
        f"{_fmt(vs, '.2f') if math.isfinite(vs) else '-'} | {_fmt(v['metric_at_B'], '.4f')} | "
        f"{_fmt(v['metric_at_1_5B'], '.4f') if e['kind'] != 'baseline' else '—'} | "
        f"{_fmt(v['final_val_loss'], '.4f')} | {_fmt(v['final_train_loss'], '.4f')} | "
        f"{_fmt(v.get('final_train_loss_evaluated', math.nan), '.4f')} | "
        f"{e['ms_per_step']:.2f} | {final_lr} |"
      )
    if res["stop"]:
      parts += _stop_rows(res["stop"])
    if "long_run" in res:
      lr_ = res["long_run"]
      steps = next(iter(lr_.values()))["steps"]
      parts += [
        "",
        f"Long run: {steps:,} steps at the defaults (nothing tuned), median over "
        "seeds. Training loss (mean over an evaluation block) at 20% / 50% / the end of "
        "the run; late / early = mean training loss over the last fifth over that of "
        "the second fifth (below 1: still falling); final validation "
        f"{res['metric']}; the learning rate at the end against its largest.",
        "",
        "| method | train loss 20% | 50% | end | late / early | final val | final lr (max) |",
        "|---|---|---|---|---|---|---|",
      ]
      for n, r in lr_.items():
        c = r["train_loss_curve"]
        rate = f"{r['final_lr']:.2e} ({r['max_lr']:.2e})" if r["final_lr"] is not None else "—"
        parts.append(
          f"| {n} | {c[len(c) // 5 - 1]:.2e} | {c[len(c) // 2 - 1]:.2e} | "
          f"{c[-1]:.2e} | {r['late_over_early']:.2f} | {r['final_metric']:.4f} | "
          f"{rate} |"
        )
    if "robust" in res:
      parts += [
        "",
        f"Robustness: final validation {res['metric']} (median over seeds) from "
        "each initial learning rate.",
        "",
        "| method | " + " | ".join(f"{x:g}" for x in ROBUST_LRS) + " | spread | worst vs best |",
        "|---|" + "---|" * (len(ROBUST_LRS) + 2),
      ]
      for n, r in res["robust"].items():
        parts.append(
          f"| {n} | "
          + " | ".join(_fmt(x, ".4f") for x in r["final"])
          + f" | {_fmt(r['spread'], '.4f')} | "
          f"{_fmt(100 * r['worst_relative'], '.1f')}% |"
        )
    parts.append("")
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


def render_plot(suite: WorkloadsResult, path: str) -> None:
  """Row 1: validation metric per workload; row 2: nag_optax learning rates; row 3: the
  performance profiles and the robustness finals."""
  plt = report.plt
  n = len(suite.workloads)
  fig, axes = plt.subplots(3, n, figsize=(4.6 * n, 11.5), squeeze=False)
  cmap = plt.get_cmap("tab20")
  names = list(suite.aggregate["scores"])
  kinds = {m: e["kind"] for res in suite.workloads.values() for m, e in res["methods"].items()}
  others = [m for m in names if kinds.get(m) != "nag_optax"]
  colors = {m: cmap(i % 20) for i, m in enumerate(others)}
  nag_colors = ("black", "tab:red", "tab:purple", "tab:olive", "tab:cyan")
  colors.update(
    {
      m: nag_colors[i % len(nag_colors)]
      for i, m in enumerate(m for m in names if kinds.get(m) == "nag_optax")
    }
  )
  for col, (w, res) in enumerate(suite.workloads.items()):
    ax = axes[0, col]
    for m, e in res["methods"].items():
      curve = np.asarray(e["values"][e["best"]]["median_metric_curve"], float)
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
      for x in e["values"][e["best"]]["median_metric_curve"]
      if np.isfinite(x)
    ]
    if finite and res["higher_is_better"]:
      ax.set_ylim(max(min(finite), res["target"] - 0.25), min(1.0, res["target"] + 0.05))
    elif finite:
      ax.set_ylim(res["target"] - 0.3, res["target"] + 1.5)
    ax.set_title(f"{res['label']}: validation {res['metric']}", fontsize=9)
    ax.set_xlabel("step")
    ax = axes[1, col]
    for m, e in res["methods"].items():
      lr = e["values"][e["best"]]["lr_curve"]
      if e["kind"] == "nag_optax" and lr is not None:
        lr = np.asarray(lr, float)
        ax.semilogy((np.arange(len(lr)) + 1) * res["eval_every"], lr, color=colors[m], label=m)
    ax.set_title(f"{res['label']}: nag_optax learning rate", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=6)
  ax = axes[2, 0]
  taus = suite.aggregate["taus"]
  for m in names:
    ax.step(
      taus,
      suite.aggregate["profiles"][m],
      where="post",
      color=colors[m],
      label=f"{m} ({suite.aggregate['scores'][m]:.2f})",
    )
  ax.set_xlabel("tau")
  ax.set_ylabel("rho(tau): fraction of workloads")
  ax.set_title("performance profiles (score)", fontsize=9)
  ax.set_ylim(-0.02, 1.02)
  col = 1
  for w, res in suite.workloads.items():
    if "robust" not in res or col >= n:
      continue
    ax = axes[2, col]
    for m, r in res["robust"].items():
      ax.semilogx(ROBUST_LRS, r["final"], "o-", color=colors[m], label=m)
    ax.set_xlabel("initial learning rate")
    ax.set_title(f"{res['label']}: final validation {res['metric']}", fontsize=9)
    ax.legend(fontsize=6)
    col += 1
  for w, res in suite.workloads.items():
    if "long_run" not in res or col >= n:
      continue
    ax = axes[2, col]
    for m, r in res["long_run"].items():
      c = np.asarray(r["train_loss_curve"], float)
      ax.semilogy(
        (np.arange(len(c)) + 1) * r["eval_every"],
        c,
        color=colors.get(m, "tab:gray"),
        lw=1.4,
        label=m,
      )
    ax.set_xlabel("step")
    ax.set_title(f"{res['label']}: training loss over a long run (defaults)", fontsize=9)
    ax.legend(fontsize=6)
    col += 1
  for ax in list(axes[2, col:]):
    ax.axis("off")
  handles, labels = axes[2, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


# Worker processes: XLA compilation of these small programs dominates the quick mode and runs on
# one core, so the workloads are spread over one process per CPU core (at most one per workload),
# each pinned to its own core (its ms/step is a one-core figure, undisturbed by the others).
# Heaviest first, assigned greedily to the least-loaded worker.
# Full-mode seconds on one core, from measured per-step and compile times (see SETTINGS).
RELATIVE_COST = dict(
  stdlib_lm=1030, mnist1d_cnn=600, mnist1d_resnet=590, digits_cnn=380, digits_mlp=70
)


class _QueueProgress:
  """The part of tqdm's interface a worker uses, forwarded to the parent through a queue."""

  def __init__(self, queue):
    self.queue = queue

  def set_postfix_str(self, text):
    self.queue.put(("postfix", text))

  def update(self, n=1):
    self.queue.put(("update", n))


def _pin_worker(cpu):
  if cpu is not None and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpu})


def _worker(name, settings, mode, queue) -> tuple:
  timer = _Timer()
  with jax.enable_x64(False):
    res = _run_workload(name, settings, mode, _QueueProgress(queue), timer)
  return res, timer.parts


def _cpus() -> list:
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def _run_parallel(names, settings, mode, progress, timer) -> dict:
  cpus = _cpus()
  n = max(1, min(len(cpus), len(names)))
  loads, plan = [0.0] * n, [[] for _ in range(n)]
  for name in sorted(names, key=lambda w: -RELATIVE_COST.get(w, 1)):
    i = loads.index(min(loads))
    plan[i].append(name)
    loads[i] += RELATIVE_COST.get(name, 1)
  ctx = multiprocessing.get_context("spawn")
  results = {}
  with ctx.Manager() as manager:
    queue = manager.Queue()
    pools = [
      concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=_pin_worker, initargs=(cpus[i] if n > 1 else None,)
      )
      for i in range(n)
    ]
    try:
      futures = {
        pools[i].submit(_worker, name, settings, mode, queue): name
        for i in range(n)
        for name in plan[i]
      }
      pending = set(futures)
      while pending:
        try:
          kind, value = queue.get(timeout=0.5)
          if kind == "update":
            progress.update(value)
          else:
            progress.set_postfix_str(value)
        except Exception:  # queue.Empty
          pass
        done = {f for f in pending if f.done()}
        for f in done:
          results[futures[f]], parts = f.result()
          for k, v in parts.items():
            timer.add(k, v)
        pending -= done
      while not queue.empty():
        kind, value = queue.get()
        if kind == "update":
          progress.update(value)
    finally:
      for pool in pools:
        pool.shutdown()
  return {name: results[name] for name in names}


def run(mode: str, progress) -> report.SuiteResult:
  # Deep-learning training runs in float32 (the runner turns float64 on for the other suites;
  # the worker processes start with it off).
  with jax.enable_x64(False):
    return _run(mode, progress)


def _run(mode: str, progress) -> report.SuiteResult:
  start = time.perf_counter()
  settings = SETTINGS.get(mode, SETTINGS["quick"])
  n_methods = len(all_methods())
  n_nag = len(nag_factories())
  n_stop = len(settings["budgets"]) if settings["stop"] is None else len(settings["stop"])
  progress.total = (
    (progress.total or 0)
    + len(settings["budgets"]) * n_methods
    + (n_stop + len(settings["robust"])) * n_nag
  )
  progress.refresh()
  timer = _Timer()
  workloads = _run_parallel(list(settings["budgets"]), settings, mode, progress, timer)
  agg = aggregate(workloads)
  g = settings["grid"]
  ms_rule = (
    f"best of 3 single-seed runs of {TIMED_BLOCKS} evaluation blocks"
    if mode == "full"
    else "the vmapped run time / lanes (quick mode)"
  )
  description = f"""
AlgoPerf-style comparison on five small Flax NNX workloads (float32), replacing the old
`minibatch` suite (its MLP and CNN are workloads 1 and 2, now on a train / validation / test
split different from the old tuning split): digits MLP 64-128-10; digits CNN (two 3x3 im2col
convolutions); MNIST-1D (`mnist1d`, {core.MNIST1D_SAMPLES} generated samples, no download) with a
3-layer 1-D CNN; MNIST-1D with a residual 1-D CNN (4 pre-norm blocks with LayerNorm, 10
convolutions); a byte-level causal transformer LM (2 layers, width 64, 4 heads, context
{core.CONTEXT}, batch 8) on the first {core.CORPUS_CHARS:,} bytes of the sorted `*.py` files of the
Python standard library (test dirs excluded), metric validation bits per character.
Classification: batch 64, metric validation accuracy (validation loss reported too).

Methods: tuned baselines `optax.adamw`, `optax.nadamw`, `optax.sgd(momentum=0.9, nesterov=True)`
with linear warm-up over {WARMUP_FRACTION:.0%} of B and cosine decay to 0 at B, lr grids
adam {ADAM_GRID[g]}, sgd {SGD_GRID[g]} (best lr = best median-over-seeds best validation metric),
budget B; self-tuning peers at their defaults in the installed optax and nag_optax's tuning-free
optimizers called with no argument (every method gets `value=loss` each step, as Flax NNX's
`optimizer.update(model, grads, value=loss)` passes it), budget 1.5 B. Schedule-free methods are
evaluated at `schedule_free_eval_params`, a method that keeps an iterate average
(`nag_optax.auto_nadamw()`) at `nag_optax.averaged_params` (the validation loss its stopping
signal reads too); the others at their training params. Train loss (last block): the mean
minibatch loss of the training params over the last evaluation block; train loss (evaluated,
end): the loss of the evaluated params at the end on a fixed sample of the training split as
large as the validation split. Target per workload (AlgoPerf): median over seeds of
the best validation metric of the best tuned baseline. Steps to target: first evaluation at or
beyond it, median over seeds (a miss within B for baselines / 1.5 B for self-tuning = "-").
ms/step: {ms_rule}, evaluation included.
Learning rate at floor: {algoperf.FLOOR_RULE}. Robustness: every nag_optax optimizer from
initial rates {ROBUST_LRS} (a traced argument, vmapped) on {", ".join(settings["robust"])}.
Stopping signal: `STOP_CONFIGS` in `benchmarks/workloads.py` (patience
{STOP_PATIENCE_FRACTION:g} B steps; `validation_patience` and `validation_loss=` where the factory
accepts them).
"""
  notes = [
    f"Steps to target move in blocks of the evaluation interval (B / {settings['evals']}).",
    "The language model is budget-limited: its loss still falls slowly at B; B is where the "
    "tuned baselines' validation loss has flattened on this CPU budget.",
  ]
  if mode != "full":
    notes.append(
      f"Mode `{mode}`: {settings['seeds']} seed, {g}-point grids, budgets "
      f"{settings['budgets']} (full: {SETTINGS['full']['seeds']} seeds, "
      f"{SETTINGS['full']['grid']}-point grids, budgets "
      f"{SETTINGS['full']['budgets']})."
    )
  problems = []
  for w, res in workloads.items():
    runs = []
    for n, e in res["methods"].items():
      v = e["values"][e["best"]]
      reached = bool(math.isfinite(e["steps_to_target"]))
      runs.append(
        report.MethodRun(
          method=n,
          needs="tuning" if e["kind"] == "baseline" else "—",
          steps=int(e["steps_to_target"]) if reached else e["steps"],
          reached=reached,
          grad_evals=int(e["steps_to_target"]) if reached else e["steps"],
          wall_time_s=e["grid_run_s"],
          final_metric=v["final_metric"],
          history=v["median_metric_curve"],
          history_every=res["eval_every"],
          note=(f"lr {e['lr']:g}" if e["kind"] == "baseline" else ""),
          extra=dict(ms_per_step=e["ms_per_step"]),
        )
      )
    problems.append(
      report.ProblemResult(name=res["label"], label=res["label"], cap=res["budget"], runs=runs)
    )
  total = time.perf_counter() - start
  return WorkloadsResult(
    name="workloads",
    title="Deep-learning workloads (AlgoPerf-style)",
    description=description,
    metric_label="validation metric",
    tol=0.0,
    mode=mode,
    problems=problems,
    notes=notes,
    total_time_s=total,
    render_markdown=render_markdown,
    render_plot=render_plot,
    workloads=workloads,
    aggregate=agg,
    parts_s=timer.parts,
    settings=dict(settings),
  )
