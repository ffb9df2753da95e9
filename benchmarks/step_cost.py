"""Step-cost suite: time, memory traffic and state size of one optimizer step, 16.8M params.

Parameters: two float32 dense layers, 2048 x 4096 and 4096 x 2048 with biases (16,783,360 in
all). One step is ``optimizer.update`` + ``optax.apply_updates``, jitted; the gradient and the
loss value 1/2 ||params||^2 are inputs, computed once, so only the optimizer's own work is
measured. The timed step donates nothing (some states return one array in two leaves, which XLA
refuses to donate twice at run time). After warm-up the steps run ``REPS`` rounds, one step of
each optimizer per round, each timed to ``block_until_ready``; the best repetition is reported,
relative to ``optax.sgd(0.1, 0.9, nesterov=True)``.

Memory traffic is XLA's cost model, not a measurement: ``cost_analysis()["bytes accessed"]`` of
the compiled step divided by the parameters' bytes (about the number of parameter-sized arrays
the step reads and writes), once as timed and once compiled with the params and the state
donated (``donate_argnums=(0, 1)``, compiled only, never run). Next to it, the number of fusions
in the compiled HLO: a step that fuses poorly shows more fusions and more bytes. The state's size
is counted from ``jax.eval_shape(optimizer.init, params)``: the bytes of its leaves divided by 4
bytes times the number of parameters ("float32 parameter-sized buffers": a bfloat16 buffer counts
half; scalars such as counters are negligible).
"""

import math
import re
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from benchmarks import report
from benchmarks.methods import Method

LAYERS = ((2048, 4096), (4096, 2048))
DTYPE = jnp.float32
FLOAT32_BYTES = 4  # the unit of the state's size: one float32 parameter-sized buffer
WARMUP = 2
REPS = {"full": 15, "quick": 5}
GOAL_RATIO = 1.5  # auto_nag's target: within 1.5x of sgd-nesterov's step time
BASELINE = "optax.sgd(0.1, 0.9, nesterov=True)"


DONATE_ARGNUMS = (0, 1)  # params and optimizer state, as a training step donates them

# make() -> optimizer; uses_value: the step passes value, grad and value_fn, as the optimizer's
# users do (nag_optax.minimize, Flax NNX's optimizer.update(model, grads, value=loss)).
METHODS = (
  Method(BASELINE, lambda: optax.sgd(0.1, 0.9, nesterov=True)),
  Method("optax.adam(1e-3)", lambda: optax.adam(1e-3)),
  Method("optax.nadamw(1e-3)", lambda: optax.nadamw(1e-3)),
  Method("optax.contrib.prodigy()", optax.contrib.prodigy),
  Method("optax.contrib.schedule_free_adamw()", optax.contrib.schedule_free_adamw),
  Method("nag_optax.nag(0.1)", lambda: nag_optax.nag(0.1)),
  Method("nag_optax.auto_nag() with value, grad, value_fn", nag_optax.auto_nag, uses_value=True),
  Method("nag_optax.auto_nag() gradient-only", nag_optax.auto_nag),
  Method("nag_optax.auto_nag_sgd() with value", nag_optax.auto_nag_sgd, uses_value=True),
  Method("nag_optax.auto_nadamw() with value", nag_optax.auto_nadamw, uses_value=True),
  Method("optax.lbfgs() (zoom line search)", optax.lbfgs, uses_value=True),
)


def make_params(key=0) -> dict:
  keys = jax.random.split(jax.random.PRNGKey(key), len(LAYERS))
  return {
    f"dense{i}": dict(w=0.01 * jax.random.normal(k, shape, DTYPE), b=jnp.zeros((shape[1],), DTYPE))
    for i, (k, shape) in enumerate(zip(keys, LAYERS))
  }


def loss(params):
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def size(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_buffers(optimizer, params) -> float:
  """Optimizer state, in float32 parameter-sized buffers: the bytes of the leaves of
  ``jax.eval_shape(optimizer.init, params)`` over 4 bytes times the number of parameters, so a
  bfloat16 buffer counts half (and a float64 scalar, with float64 enabled, a negligible 8 bytes)."""
  return nbytes(jax.eval_shape(optimizer.init, params)) / (FLOAT32_BYTES * size(params))


def step_fn(
  method: Method, optimizer: optax.GradientTransformationExtraArgs, donate_argnums: tuple = ()
):
  """The jitted step the suite times: ``update`` (passed value, grad and value_fn when the row
  reads them) and ``apply_updates``; ``(params, state, grad, value) -> (params, state)``."""

  def step(params, state, grad, value):
    if method.uses_value:
      updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    else:
      updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=donate_argnums)


def bytes_accessed(compiled) -> float:
  """XLA's ``cost_analysis()["bytes accessed"]`` of a compiled program.

  Some jax versions return one dict, others a list of dicts (one per program); a list is summed.
  """
  costs = compiled.cost_analysis()
  if isinstance(costs, dict):
    costs = [costs]
  return float(sum(c["bytes accessed"] for c in costs))


def count_fusions(hlo_text: str) -> int:
  """Fusion instructions (``... = shape fusion(operands), kind=..., calls=...``) in HLO text."""
  return len(re.findall(r"\sfusion\(", hlo_text))


def count_aliased_outputs(hlo_text: str) -> int:
  """Outputs that reuse a donated input buffer (the module's ``input_output_alias`` entries)."""
  return len(re.findall(r"\(\d+, \{[^}]*\}, (?:may|must)-alias\)", hlo_text))


def memory_traffic(compiled, params) -> dict:
  """Bytes accessed / bytes of params, fusions and outputs aliased to inputs, of a compiled step."""
  text = compiled.as_text()
  return dict(
    bytes_ratio=bytes_accessed(compiled) / nbytes(params),
    fusions=count_fusions(text),
    aliased_outputs=count_aliased_outputs(text),
  )


def donated_traffic(method: Method, optimizer, *args: Any) -> dict:
  """:func:`memory_traffic` of the step compiled with ``donate_argnums=DONATE_ARGNUMS``.

  Compiled from abstract shapes only: XLA refuses, at run time, to donate one buffer that a
  state holds in two leaves; the cost model does not depend on it.
  """
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), args)
  with warnings.catch_warnings():
    # "Some donated buffers were not usable": a state leaf no output can reuse; expected.
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    compiled = step_fn(method, optimizer, DONATE_ARGNUMS).lower(*shapes).compile()
  return memory_traffic(compiled, args[0])


def run_steps(method: Method, params, steps: int):
  """The params after ``steps`` jitted steps of ``method`` from ``params`` (the suite's step:
  the gradient and value of the start, given)."""
  value, grad = jax.value_and_grad(loss)(params)
  optimizer = method.build()
  state = optimizer.init(params)
  step = step_fn(method, optimizer)
  for _ in range(steps):
    params, state = step(params, state, grad, value)
  return params


def time_methods(rows, reps: int) -> dict:
  """Compiles and warms up every method, then times them round-robin (one step of each per
  round), so that drifts of the machine (allocator, frequency, neighbours) hit all alike."""
  params0 = make_params()
  value, grad = jax.value_and_grad(loss)(params0)
  live, measured = {}, {}
  for m in rows:
    optimizer = m.build()
    params, state = params0, optimizer.init(params0)
    step = step_fn(m, optimizer)
    start = time.perf_counter()
    compiled = step.lower(params, state, grad, value).compile()
    measured[m.name] = dict(
      buffers=state_buffers(optimizer, params0),
      compile_s=time.perf_counter() - start,
      times_s=[],
      traffic=memory_traffic(compiled, params0),
      donated=donated_traffic(m, optimizer, params, state, grad, value),
    )
    for _ in range(WARMUP):
      params, state = jax.block_until_ready(compiled(params, state, grad, value))
    live[m.name] = [compiled, params, state]
  for _ in range(reps):
    for m in rows:
      compiled, params, state = live[m.name]
      start = time.perf_counter()
      params, state = jax.block_until_ready(compiled(params, state, grad, value))
      measured[m.name]["times_s"].append(time.perf_counter() - start)
      live[m.name] = [compiled, params, state]
  for m in rows:
    r = measured[m.name]
    r.update(
      best_s=min(r["times_s"]),
      median_s=float(np.median(r["times_s"])),
      finite=all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(live[m.name][1])),
    )
  return measured


def run(mode: str, progress: report.Progress) -> report.SuiteResult:
  start = time.perf_counter()
  reps = REPS.get(mode, REPS["quick"])
  report.add_runs(progress, len(METHODS))
  progress.set_postfix_str("step cost")
  measured = time_methods(METHODS, reps)
  progress.update(len(METHODS))

  params = make_params()
  n = size(params)
  base = measured[BASELINE]["best_s"]
  lines = [
    "| optimizer | time vs sgd-nesterov | best step (ms) | median step (ms) | "
    "optimizer state, in float32 parameter-sized buffers | bytes accessed / param bytes | "
    "same, params and state donated | fusions (donated) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  runs = []
  for m in METHODS:
    r = measured[m.name]
    ratio = r["best_s"] / base
    traffic, donated = r["traffic"], r["donated"]
    lines.append(
      f"| `{m.name}` | {ratio:.2f} | {1e3 * r['best_s']:.2f} | "
      f"{1e3 * r['median_s']:.2f} | {r['buffers']:.2f} | "
      f"{traffic['bytes_ratio']:.2f} | {donated['bytes_ratio']:.2f} | "
      f"{traffic['fusions']} ({donated['fusions']}) |"
    )
    # One step measured, not a run to a target: the run-to-target fields stay unset.
    runs.append(
      report.MethodRun(
        method=m.name,
        needs="value, grad, value_fn" if m.uses_value else "—",
        note=(
          f"{ratio:.2f}x time, {r['buffers']:.2f} buffers, {traffic['bytes_ratio']:.1f}x bytes"
        ),
        extra=dict(
          time_ratio=ratio,
          best_step_s=r["best_s"],
          median_step_s=r["median_s"],
          times_s=r["times_s"],
          buffers=r["buffers"],
          finite_after_steps=r["finite"],
          bytes_accessed_ratio=traffic["bytes_ratio"],
          fusions=traffic["fusions"],
          donated_bytes_accessed_ratio=donated["bytes_ratio"],
          donated_fusions=donated["fusions"],
          donated_aliased_outputs=donated["aliased_outputs"],
        ),
      )
    )
  table = "\n".join(lines)
  auto = [measured[m.name] for m in METHODS if m.name.startswith("nag_optax.auto_nag()")]
  verdict = (
    "meets"
    if all(a["best_s"] / base <= GOAL_RATIO and a["buffers"] <= 3.0 + 1e-3 for a in auto)
    else "misses"
  )
  x64 = ", float64 enabled by the runner" if jax.config.read("jax_enable_x64") else ""
  description = f"""
{n:,} float32 parameters in {len(jax.tree.leaves(params))} leaves (dense layers
{" and ".join(f"{a} x {b}" for a, b in LAYERS)} with biases). One jitted
`update` + `apply_updates` step (nothing donated), gradient and value given;
best of {reps} repetitions after {WARMUP} warm-up steps, each to `block_until_ready`, the
optimizers taking turns (one step of each per round) (wall time, this machine's
{jax.default_backend()} backend; the parameters float32{x64}). State, in float32
parameter-sized buffers: the bytes of the leaves of `jax.eval_shape(optimizer.init, params)` /
(4 bytes x number of parameters), so a bfloat16 buffer counts half (scalars, float64 ones
included, are negligible). Bytes accessed: XLA's
cost model of the compiled step (`compiled.cost_analysis()["bytes accessed"]`) / the parameters'
bytes ({nbytes(params) / 2**20:.0f} MiB), roughly the parameter-sized arrays the step reads and
writes (sgd-nesterov's floor is 5: params, gradient and momentum read, params and momentum
written, once each); once as timed and once compiled with params and state donated
(`donate_argnums={DONATE_ARGNUMS}`, compiled, not run). Fusions: fusion instructions in the
compiled HLO (as timed; donated in parentheses), one or more per leaf.

{table}

auto_nag {verdict} the goal: within {GOAL_RATIO}x of sgd-nesterov's step time and at most 3
float32 parameter-sized buffers.
"""
  notes = []
  if mode != "full":
    notes.append(f"Quick mode: {reps} repetitions (full mode {REPS['full']}).")
  problem = report.ProblemResult(
    name=f"one step, {n / 1e6:.1f}M float32 parameters",
    label=f"{n / 1e6:.1f}M params",
    cap=reps,
    runs=runs,
    info=dict(parameters=n, layers=LAYERS, reps=reps, warmup=WARMUP),
  )
  return report.SuiteResult(
    name="step_cost",
    title=f"Step cost, {n / 1e6:.1f}M parameters",
    description=description,
    metric_label="step time / sgd-nesterov step time",
    tol=GOAL_RATIO,
    mode=mode,
    problems=[problem],
    notes=notes,
    compile_time_s={m.name: measured[m.name]["compile_s"] for m in METHODS},
    total_time_s=time.perf_counter() - start,
    render_markdown=render_markdown,
    render_plot=render_plot,
  )


def render_markdown(suite: report.SuiteResult) -> str:
  """The suite's own table (in its description), its notes and the common footer."""
  parts = [f"## {suite.title}", "", suite.description.strip(), ""]
  parts += [f"- {note}" for note in suite.notes] + ([""] if suite.notes else [])
  return "\n".join(parts + [report.footer(suite)]) + "\n"


def render_plot(suite: report.SuiteResult, path: str) -> None:
  """Two bar panels per optimizer: step time / sgd-nesterov's, and bytes accessed / param bytes
  (as timed and with params and state donated)."""
  import matplotlib.pyplot as plt  # report.py has selected the Agg backend

  runs = suite.problems[0].runs
  names = [r.method for r in runs]
  y = np.arange(len(runs))
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(runs) + 1.5), sharey=True)
  left.barh(y, [r.extra["time_ratio"] for r in runs], color="tab:blue")
  left.axvline(1.0, color="gray", lw=0.8)
  left.axvline(suite.tol, color="gray", lw=0.8, ls=":")
  left.set_xscale("log")
  left.set_xlabel(suite.metric_label, fontsize=8)
  left.set_yticks(y, names, fontsize=7)
  left.invert_yaxis()
  right.barh(
    y - 0.2,
    [r.extra["bytes_accessed_ratio"] for r in runs],
    height=0.4,
    color="tab:orange",
    label="as timed",
  )
  right.barh(
    y + 0.2,
    [r.extra["donated_bytes_accessed_ratio"] for r in runs],
    height=0.4,
    color="tab:green",
    label="params and state donated",
  )
  right.set_xscale("log")
  right.set_xlabel("bytes accessed / parameter bytes (XLA cost model)", fontsize=8)
  right.legend(fontsize=7, frameon=False)
  fig.suptitle(suite.title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
