"""GPU check: the step-cost suite, one ``minimize`` and one minibatch training run on a GPU, each
result compared with the same computation on the CPU.

  python -m benchmarks.studies.gpu_check [--out DIR] [--device cpu]

Prints the device, runs the step-cost suite there (its table printed and written to ``DIR``,
default ``bench_out/gpu_check/``, as the runner writes it), then compares, in float32 on both
backends (x64 off; matrix products at full float32 precision, ``jax_default_matmul_precision``
"highest", where a GPU would otherwise use TF32):

- step cost: the params after ``STEPS`` steps of every optimizer of the suite from the suite's
  16.8M-parameter start;
- minimize: ``nag_optax.minimize`` with ``auto_nag(rtol=MINIMIZE_RTOL)`` on the logistic suite's
  breast_cancer problem (lambda 1e-2): the solution, its value and its step count;
- training: the workloads suite's digits MLP trained by ``auto_nag_sgd()`` for
  ``TRAIN_BLOCKS * TRAIN_EVAL_EVERY`` steps (its trainer, ``value=loss`` passed): the training
  loss of every block, the final validation loss, and the final validation accuracy.

Inputs (initial params, data, batch order) are made once on the CPU and copied to each device, so
only the computation differs. A result passes when it is finite on both and
||GPU - CPU|| / ||CPU|| <= ``RTOL``, the same step count for ``minimize``, and at most one
validation sample classified differently. ``RTOL`` is float32 rounding (eps 1.2e-7) grown by sums
over up to 16.8M terms, whose order differs between backends, and by the steps.

Exit status: 0 every result finite and within tolerance; 1 one is not (its line says FAIL);
3 no GPU was found (it says so and compares nothing). ``--device cpu`` puts the CPU in the GPU's
place: the CPU against itself, a check of this script rather than of a GPU.
"""

import argparse
import functools
import math
import sys

import jax
import numpy as np

import nag_optax

NO_GPU = 3
FAILED = 1
STEPS = 3  # optimizer steps compared per step-cost row
MINIMIZE_RTOL = 1e-4  # minimize's own stopping tolerance (gradient norm / initial)
MINIMIZE_MAX_STEPS = 2_000
TRAIN_BLOCKS = 4
TRAIN_EVAL_EVERY = 25
# Largest relative difference allowed between the two backends' float32 results: float32 rounding
# (1.2e-7) grown by long sums and by the steps, with room for a GPU's own reduction order, fused
# multiply-adds and transcendental functions; a real error (a wrong step moves the params by O(1)
# relative to the step) is far above it.
RTOL = 1e-4


def relative_difference(result, reference) -> float:
  """||result - reference|| / ||reference|| over all leaves, in float64 on the host.

  ``inf`` when either is not finite; the absolute difference when the reference is zero.
  """
  a = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(result))]
  b = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(reference))]
  if len(a) != len(b) or not all(np.all(np.isfinite(x)) for x in a + b):
    return math.inf
  difference = math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b)))
  norm = math.sqrt(sum(float(np.sum(y**2)) for y in b))
  return difference / norm if norm > 0 else difference


def on(device, fn, *host_args):
  """``fn(*args)`` with ``args`` copied to ``device`` and ``device`` the default; host result."""
  with jax.default_device(device):
    args = jax.device_put(host_args, device)
    return jax.device_get(jax.block_until_ready(fn(*args)))


def host(fn, *args):
  """``fn(*args)`` computed on the CPU, as host (NumPy) arrays: the inputs both devices get."""
  return on(jax.devices("cpu")[0], fn, *args)


# ---------------------------------------------------------------------------------------------
# The three computations; each takes host inputs (copied to the device by ``on``).


def step_cost_params(method, params):
  """The params after ``STEPS`` steps of the step-cost suite's jitted step for ``method``."""
  from benchmarks import step_cost

  return step_cost.run_steps(method, params, STEPS)


def minimize_problem() -> dict:
  from benchmarks import logistic

  d = logistic.problem_data(logistic.load("breast_cancer", 1e-2))
  return {k: np.asarray(d[k], np.float32) for k in ("features", "labels", "lam", "x0")}


def minimize_run(d) -> dict:
  from benchmarks import logistic

  solution = nag_optax.minimize(
    logistic.loss,
    d["x0"],
    nag_optax.auto_nag(rtol=MINIMIZE_RTOL),
    max_steps=MINIMIZE_MAX_STEPS,
    args=(d,),
  )
  return dict(
    params=solution.params, value=solution.value, steps=solution.steps, reason=solution.reason
  )


def training_inputs():
  from benchmarks.workloads import roster

  wl = roster.digits_mlp()
  _, params = wl.init_params(0)
  return wl, params, wl.batch_indices(0, TRAIN_BLOCKS * TRAIN_EVAL_EVERY)


def training_run(wl, params, batches) -> dict:
  from benchmarks.workloads import trainer

  train = jax.jit(trainer.make_trainer(wl, nag_optax.auto_nag_sgd, TRAIN_BLOCKS, TRAIN_EVAL_EVERY))
  return train(params, batches)


# ---------------------------------------------------------------------------------------------
# Checks.


class Checks:
  """Collects one line per comparison; ``failed`` when any result is off."""

  def __init__(self):
    self.failed = False

  def report(self, name: str, ok: bool, detail: str) -> None:
    self.failed |= not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

  def close(self, name: str, result, reference, rtol: float = RTOL) -> float:
    difference = relative_difference(result, reference)
    self.report(name, difference <= rtol, f"relative difference {difference:.2e} (<= {rtol:g})")
    return difference


def check_step_cost(checks: Checks, device, methods=None) -> None:
  from benchmarks import step_cost

  cpu = jax.devices("cpu")[0]
  params = host(step_cost.make_params)
  for method in methods or step_cost.METHODS:
    run = functools.partial(step_cost_params, method)
    reference = on(cpu, run, params)
    result = on(device, run, params)
    checks.close(f"step cost, {method.name}, params after {STEPS} steps", result, reference)


def check_minimize(checks: Checks, device) -> None:
  d = minimize_problem()
  reference = on(jax.devices("cpu")[0], minimize_run, d)
  result = on(device, minimize_run, d)
  checks.close(
    "minimize(auto_nag) on breast_cancer, solution", result["params"], reference["params"]
  )
  checks.close("minimize, value", result["value"], reference["value"])
  here, there = (
    (int(r["steps"]), nag_optax.StopReason(int(r["reason"])).name) for r in (result, reference)
  )
  checks.report(
    "minimize, steps and stop reason",
    here == there,
    f"{here[0]} steps ({here[1]}) here, {there[0]} ({there[1]}) on the CPU",
  )


def check_training(checks: Checks, device) -> None:
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    wl, params, batches = training_inputs()
    params = jax.device_get(params)
  reference = on(cpu, lambda p, b: training_run(wl, p, b), params, batches)
  result = on(device, lambda p, b: training_run(wl, p, b), params, batches)
  name = f"digits MLP, auto_nag_sgd(), {TRAIN_BLOCKS * TRAIN_EVAL_EVERY} steps"
  checks.close(f"{name}, training loss per block", result["train_loss"], reference["train_loss"])
  checks.close(f"{name}, final validation loss", result["val_loss"][-1], reference["val_loss"][-1])
  samples = len(wl.splits["validation"][1])
  flipped = abs(float(result["metric"][-1]) - float(reference["metric"][-1])) * samples
  checks.report(
    f"{name}, final validation accuracy",
    bool(np.isfinite(flipped)) and flipped <= 1.0 + 1e-3,
    f"{float(result['metric'][-1]):.4f} here, {float(reference['metric'][-1]):.4f} on "
    f"the CPU ({flipped:.0f} of {samples} samples differ)",
  )


def find_device(name: str):
  """The first device of the platform ``name`` ("gpu" or "cpu"); None if there is none."""
  try:
    return jax.devices(name)[0]
  except RuntimeError:
    return None


def run_suite(out: str) -> None:
  from tqdm import tqdm

  from benchmarks import report
  from benchmarks import step_cost

  with tqdm(total=0, desc="step_cost", unit="run", file=sys.stderr) as progress:
    suite = step_cost.run("quick", progress)
  print(report.write(suite, out), flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.studies.gpu_check",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--out",
    default="bench_out/gpu_check",
    help="where the step-cost suite writes its .md/.json/.png",
  )
  parser.add_argument(
    "--device",
    default="gpu",
    choices=("gpu", "cpu"),
    help="the platform checked against the CPU (cpu: a check of this script)",
  )
  args = parser.parse_args(argv)
  device = find_device(args.device)
  if device is None:
    print(
      f"No GPU found (jax {jax.__version__}, devices {jax.devices()}): nothing compared; "
      f"exit status {NO_GPU}."
    )
    return NO_GPU
  print(
    f"Device: {device.device_kind} ({device.platform}, {device}); jax {jax.__version__}; "
    f"reference: {jax.devices('cpu')[0].device_kind} CPU; float32, matmul precision "
    "highest.",
    flush=True,
  )
  checks = Checks()
  with jax.enable_x64(False), jax.default_matmul_precision("highest"):
    with jax.default_device(device):
      run_suite(args.out)
    check_step_cost(checks, device)
    check_minimize(checks, device)
    check_training(checks, device)
  print(
    "All results finite and within float32 rounding of the CPU."
    if not checks.failed
    else "Some results differ from the CPU (FAIL above)."
  )
  return FAILED if checks.failed else 0


if __name__ == "__main__":
  sys.exit(main())
