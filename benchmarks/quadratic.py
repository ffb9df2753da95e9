"""Quadratic suite: f(x) = 1/2 (x - x*)^T A (x - x*), n = 300, as in ANCHORS.md.

A = Q diag(lambda) Q^T with Q a Haar rotation and lambda log- (or linearly) spaced in [1, kappa],
x0 = 0, float64. Every method runs until ||x_k - x*|| <= 1e-6 ||x_0 - x*||. The problem data is a
traced argument of one compiled solver per method, so the six problems cost one compilation,
and a learning-rate grid is one vmapped call.
"""

import dataclasses
import math
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from benchmarks import loop
from benchmarks import report
from tests import quadratics

TOL = 1e-6
DIM = 300
CAP = 50_000
SEED = 0
PLOT_HORIZON = 40

# Decade grids, as a user who does not know L would try them (and as ANCHORS.md measured them).
# A grid in units of 1/L would do better for sgd: momentum-0.9 Nesterov is stable up to
# lr L < 2(1+b)/(1+2b) = 1.36, and lr = 1.3/L needs 9,016 iterations at kappa 1e4 vs 11,750.
SGD_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
ADAM_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass(frozen=True)
class Method:
  """An Optax-style method: ``make(problem, learning_rate)`` builds the optimizer inside the
  traced solver, from traced problem constants (``lipschitz``, ``strong_convexity``)."""
  name: str
  needs: str
  make: Callable[[dict, Any], optax.GradientTransformation]
  grid: Optional[Callable[[quadratics.Quadratic], np.ndarray]] = None  # learning rates to try
  uses_value: bool = False
  value_from_linesearch: bool = False
  pass_extra_args: bool = True
  count_value: bool = True
  requires: Optional[str] = None  # nag_optax attribute that must exist (for upcoming APIs)


def _heavy_ball(p, lr):
  del lr
  root_l, root_mu = jnp.sqrt(p["lipschitz"]), jnp.sqrt(p["strong_convexity"])
  q = (root_l - root_mu) / (root_l + root_mu)
  # optax.sgd with (non-Nesterov) momentum b is exactly x+ = x - a g + b (x - x-).
  return optax.sgd(4.0 / (root_l + root_mu) ** 2, momentum=q ** 2)


METHODS = (
    Method("heavy ball, optimal a and b", "L and mu", _heavy_ball),
    Method("Nesterov, step 1/L, momentum q (nag_optax.nag strongly_convex)", "L and mu",
           lambda p, lr: nag_optax.nag(1.0 / p["lipschitz"], schedule="strongly_convex",
                                       condition_number=p["lipschitz"] / p["strong_convexity"])),
    Method("nag_optax.nag convex schedule + gradient restart, step 1/L", "L",
           lambda p, lr: nag_optax.nag(1.0 / p["lipschitz"], schedule="convex",
                                       restart="gradient")),
    Method("optax.sgd(nesterov=True) 0.9, best of lr grid", "tuning",
           lambda p, lr: optax.sgd(lr, 0.9, nesterov=True),
           grid=lambda q: np.array(SGD_GRID)),
    Method("optax.adam, best of lr grid", "tuning", lambda p, lr: optax.adam(lr),
           grid=lambda q: np.array(ADAM_GRID)),
    Method("optax.lbfgs()", "f values", lambda p, lr: optax.lbfgs(), value_from_linesearch=True),
    Method("optax.polyak_sgd, f* = 0", "f and f*", lambda p, lr: optax.polyak_sgd(f_min=0.0),
           uses_value=True),
    Method("optax.contrib.prodigy()", "—", lambda p, lr: optax.contrib.prodigy()),
    # The stopping signal is switched off (rtol=None): the suite's own target is the distance.
    Method("nag_optax.auto_nag() (value, value_fn passed)", "—",
           lambda p, lr: nag_optax.auto_nag(rtol=None), uses_value=True, count_value=False),
    Method("nag_optax.auto_nag() gradient-only (no extra args)", "—",
           lambda p, lr: nag_optax.auto_nag(rtol=None), pass_extra_args=False),
)

CG_NAME = "conjugate gradient (Krylov optimum; quadratics only)"


def problems(mode: str) -> list[quadratics.Quadratic]:
  spacings = ("log", "linear") if mode == "full" else ("log",)
  return [quadratics.make_quadratic(DIM, kappa, spacing=s, seed=SEED)
          for s in spacings for kappa in (1e2, 1e4, 1e6)]


def methods() -> list[Method]:
  return [m for m in METHODS if m.requires is None or hasattr(nag_optax, m.requires)]


def _data(q: quadratics.Quadratic) -> dict:
  bound = q.lower_bound_iterations(TOL)
  return dict(
      matrix=jnp.asarray(q.matrix), x_star=jnp.asarray(q.x_star), x0=jnp.asarray(q.x0),
      lipschitz=jnp.asarray(q.lipschitz), strong_convexity=jnp.asarray(q.strong_convexity),
      tol=jnp.asarray(TOL), max_steps=jnp.asarray(CAP, jnp.int32),
      # The plots show at most PLOT_HORIZON * N_LB iterations; record just enough to fill them.
      record_every=jnp.asarray(
          max(1, math.ceil(min(CAP, PLOT_HORIZON * bound) / loop.HISTORY_SIZE)), jnp.int32))


def _objective(p):
  def fun(x):
    d = x - p["x_star"]
    return 0.5 * jnp.dot(d, p["matrix"] @ d)

  initial = jnp.linalg.norm(p["x0"] - p["x_star"])
  distance = lambda x: jnp.linalg.norm(x - p["x_star"]) / initial
  return fun, distance


def _solver(method: Method):
  def solve(p, learning_rate):
    fun, distance = _objective(p)
    return loop.run_to_target(
        method.make(p, learning_rate), fun, p["x0"], distance, p["max_steps"],
        p["record_every"], tol=p["tol"], uses_value=method.uses_value,
        value_from_linesearch=method.value_from_linesearch,
        pass_extra_args=method.pass_extra_args, count_value=method.count_value)
  return solve


def conjugate_gradient(p) -> loop.RunResult:
  """Textbook CG on A x = A x*, one matrix-vector product per iteration."""
  _, distance = _objective(p)
  a = p["matrix"]
  residual = a @ (p["x_star"] - p["x0"])  # = -grad f(x0): the one extra product

  def step(carry):
    x, r, direction, rr = carry
    ad = a @ direction
    alpha = rr / jnp.dot(direction, ad)
    x = x + alpha * direction
    r = r - alpha * ad
    rr_next = jnp.dot(r, r)
    return x, r, r + (rr_next / rr) * direction, rr_next

  carry = (p["x0"], residual, residual, jnp.dot(residual, residual))
  _, result = loop.iterate_to_target(step, carry, lambda c: distance(c[0]), tol=p["tol"],
                                     max_steps=p["max_steps"], record_every=p["record_every"])
  products = result.steps + 1
  return result._replace(grad_evals=products, function_evals=jnp.zeros_like(products))


def _to_run(name, needs, result, seconds, every, lane=None, note="", extra=None):
  pick = (lambda x: np.asarray(x)[lane]) if lane is not None else np.asarray
  # 4 significant digits are plenty for a log-scale plot and keep the JSON small.
  history = [float(f"{v:.4g}") if math.isfinite(v) else None for v in pick(result.history)]
  while history and history[-1] is None:
    history.pop()
  return report.MethodRun(
      method=name, needs=needs, steps=int(pick(result.steps)), reached=bool(pick(result.reached)),
      grad_evals=int(pick(result.grad_evals)), function_evals=int(pick(result.function_evals)),
      wall_time_s=seconds, final_metric=float(pick(result.metric)), history=history,
      history_every=every, note=note, extra=extra or {})


def _best_lane(result) -> int:
  steps = np.where(np.asarray(result.reached), np.asarray(result.steps), np.iinfo(np.int32).max)
  if np.asarray(result.reached).any():
    return int(np.argmin(steps))
  metric = np.where(np.isfinite(np.asarray(result.metric)), np.asarray(result.metric), np.inf)
  return int(np.argmin(metric))


def run(mode: str, progress) -> report.SuiteResult:
  start = time.perf_counter()
  qs = problems(mode)
  ms = methods()
  progress.total = (progress.total or 0) + len(qs) * (len(ms) + 1)
  progress.refresh()
  compiled, compile_time = {}, {}
  results = []
  for q in qs:
    p = _data(q)
    every = int(p["record_every"])
    bound = q.lower_bound_iterations(TOL)
    runs = []

    progress.set_postfix_str(f"{q.name}: CG")
    if CG_NAME not in compiled:
      compiled[CG_NAME], compile_time[CG_NAME] = loop.compile_timed(conjugate_gradient, p)
    out, seconds = loop.call_timed(compiled[CG_NAME], p)
    runs.append(_to_run(CG_NAME, "—", out, seconds, every))
    progress.update(1)

    for m in ms:
      progress.set_postfix_str(f"{q.name}: {m.name[:28]}")
      if m.grid is None:
        lr = jnp.asarray(0.0)
        fn = _solver(m)
      else:
        lr = jnp.asarray(m.grid(q))
        fn = jax.vmap(_solver(m), in_axes=(None, 0))
      if m.name not in compiled:
        compiled[m.name], compile_time[m.name] = loop.compile_timed(fn, p, lr)
      out, seconds = loop.call_timed(compiled[m.name], p, lr)
      if m.grid is None:
        runs.append(_to_run(m.name, m.needs, out, seconds, every))
      else:
        lane = _best_lane(out)
        grid = [dict(learning_rate=float(lr[i]), steps=int(out.steps[i]),
                     reached=bool(out.reached[i]), diverged=bool(out.diverged[i]),
                     final_metric=float(out.metric[i])) for i in range(len(lr))]
        runs.append(_to_run(m.name, m.needs, out, seconds, every, lane=lane,
                            note=f"lr {float(lr[lane]):.3g}", extra=dict(grid=grid)))
      progress.update(1)
    results.append(report.ProblemResult(
        name=q.name, label=f"{q.name.split()[0]}, kappa 1e{round(math.log10(q.condition_number))}",
        cap=CAP,
        runs=runs, bound=bound, bound_rate=q.q,
        info=dict(dim=q.dim, condition_number=q.condition_number, lipschitz=q.lipschitz,
                  strong_convexity=q.strong_convexity, q=q.q, seed=SEED)))

  description = f"""
f(x) = 1/2 (x - x*)^T A (x - x*), A = Q diag(lambda) Q^T with Q a Haar-random rotation
(`tests.quadratics.make_quadratic`, seed {SEED}), n = {DIM}, lambda from 1 to kappa
({'log- and linearly spaced' if mode == 'full' else 'log-spaced'}), x* ~ N(0, I), x0 = 0, float64.
Cap {CAP:,} iterations. N_LB = ceil(ln(1/eps) / ln(1/q)), q = (sqrt(kappa)-1)/(sqrt(kappa)+1).
Gradient evaluations count matrix-vector products for CG and line-search calls for L-BFGS;
wall time excludes compilation and, for a learning-rate grid, covers the whole (vmapped) grid.
sgd-nesterov lr grid {SGD_GRID}; adam lr grid {ADAM_GRID}.
"""
  notes = []
  if mode != "full":
    notes.append("Quick mode: log spectrum only (full mode adds the linear spectrum).")
  return report.SuiteResult(
      name="quadratic", title="Quadratics, n = 300", description=description,
      metric_label="||x_k - x*|| / ||x_0 - x*||", tol=TOL, mode=mode, problems=results,
      notes=notes, compile_time_s=compile_time, total_time_s=time.perf_counter() - start)
