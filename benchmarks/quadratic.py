"""Quadratic suite: f(x) = 1/2 (x - x*)^T A (x - x*), n = 300.

A = Q diag(lambda) Q^T with Q a Haar rotation and lambda log- (or linearly) spaced in [1, kappa],
x0 = 0, float64. Every method runs until ||x_k - x*|| <= 1e-6 ||x_0 - x*||. The problem data is a
traced argument of one compiled solver per method, so the six problems cost one compilation,
and a learning-rate grid is one vmapped call.
"""

import math
import time

import jax.numpy as jnp
import optax

import nag_optax
from benchmarks import driver
from benchmarks import report
from benchmarks.methods import Method
from problems import quadratics

TOL = driver.TOL
DIM = 300
CAP = 50_000
SEED = 0
PLOT_HORIZON = 40  # the plots show at most this many times N_LB iterations

# Decade grids, as a user who does not know L would try them (a grid in units of 1/L would favour
# sgd-nesterov, which is stable up to lr L < 2(1+b)/(1+2b) = 1.36 with momentum b = 0.9).
SGD_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
ADAM_GRID = (1e-3, 1e-2, 1e-1, 1.0)


# ``make(p, learning_rate)`` builds the optimizer inside the traced solver, from the traced
# problem constants (``lipschitz``, ``strong_convexity``).


def _heavy_ball(p, lr):
  del lr
  root_l, root_mu = jnp.sqrt(p["lipschitz"]), jnp.sqrt(p["strong_convexity"])
  q = (root_l - root_mu) / (root_l + root_mu)
  # optax.sgd with (non-Nesterov) momentum b is exactly x+ = x - a g + b (x - x-).
  return optax.sgd(4.0 / (root_l + root_mu) ** 2, momentum=q**2)


def _best_nesterov(p, lr):
  del lr
  step, momentum, _ = quadratics.best_nesterov_parameters(p["lipschitz"], p["strong_convexity"])
  return nag_optax.nag(step, momentum)


METHODS = (
  Method("heavy ball, optimal a and b", _heavy_ball, needs="L and mu"),
  Method(
    "Nesterov, best fixed step 4/(3L+mu) and momentum (Lessard, Recht & Packard)",
    _best_nesterov,
    needs="L and mu",
  ),
  Method(
    "Nesterov, step 1/L, momentum q (nag_optax.nag strongly_convex)",
    lambda p, lr: nag_optax.nag(
      1.0 / p["lipschitz"],
      schedule="strongly_convex",
      condition_number=p["lipschitz"] / p["strong_convexity"],
    ),
    needs="L and mu",
  ),
  Method(
    "nag_optax.nag convex schedule + gradient restart, step 1/L",
    lambda p, lr: nag_optax.nag(1.0 / p["lipschitz"], schedule="convex", restart="gradient"),
    needs="L",
  ),
  *driver.tuned_baselines(SGD_GRID, ADAM_GRID),
  driver.lbfgs(),
  Method(
    "optax.polyak_sgd, f* = 0",
    lambda p, lr: optax.polyak_sgd(f_min=0.0),
    needs="f and f*",
    uses_value=True,
  ),
  Method("optax.contrib.prodigy()", lambda p, lr: optax.contrib.prodigy()),
  # The stopping signal is switched off (rtol=None): the suite's own target is the distance.
  Method(
    "nag_optax.auto_nag() (value, value_fn passed)",
    lambda p, lr: nag_optax.auto_nag(rtol=None),
    uses_value=True,
    count_value=False,
  ),
  Method(
    "nag_optax.auto_nag() gradient-only (no extra args)",
    lambda p, lr: nag_optax.auto_nag(rtol=None),
    pass_extra_args=False,
  ),
  # The Nesterov method (auto_nag's float32 method): in float64 the default runs spectral steps
  # until the loss curves down, which it never does on these convex problems.
  Method(
    'auto_nag(method="nesterov") gradient-only',
    lambda p, lr: nag_optax.auto_nag(method="nesterov", rtol=None),
    pass_extra_args=False,
  ),
)

CG_NAME = "conjugate gradient (Krylov optimum; quadratics only)"


def problems(mode: str) -> list[quadratics.Quadratic]:
  spacings = ("log", "linear") if mode == "full" else ("log",)
  return [
    quadratics.make_quadratic(DIM, kappa, spacing=s, seed=SEED)
    for s in spacings
    for kappa in (1e2, 1e4, 1e6)
  ]


def _data(q: quadratics.Quadratic) -> dict:
  bound = q.lower_bound_iterations(TOL)
  return dict(
    matrix=jnp.asarray(q.matrix),
    x_star=jnp.asarray(q.x_star),
    x0=jnp.asarray(q.x0),
    lipschitz=jnp.asarray(q.lipschitz),
    strong_convexity=jnp.asarray(q.strong_convexity),
    tol=jnp.asarray(TOL),
    max_steps=jnp.asarray(CAP, jnp.int32),
    record_every=jnp.asarray(driver.record_every(min(CAP, PLOT_HORIZON * bound)), jnp.int32),
  )


def _objective(p):
  def fun(x):
    d = x - p["x_star"]
    return 0.5 * jnp.dot(d, p["matrix"] @ d)

  initial = jnp.linalg.norm(p["x0"] - p["x_star"])
  distance = lambda x: jnp.linalg.norm(x - p["x_star"]) / initial
  return fun, distance


def conjugate_gradient(p) -> driver.RunResult:
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
  _, result = driver.iterate_to_target(
    step,
    carry,
    lambda c: distance(c[0]),
    tol=p["tol"],
    max_steps=p["max_steps"],
    record_every=p["record_every"],
  )
  products = result.steps + 1
  return result._replace(grad_evals=products, function_evals=jnp.zeros_like(products))


def run(mode: str, progress: report.Progress) -> report.SuiteResult:
  start = time.perf_counter()
  qs = problems(mode)
  report.add_runs(progress, len(qs) * (len(METHODS) + 1))
  compiled = driver.Compiled()
  results = []
  for q in qs:
    p = _data(q)
    every = int(p["record_every"])
    progress.set_postfix_str(f"{q.name}: CG")
    cg = compiled.get(CG_NAME, CG_NAME, conjugate_gradient, p)
    out, seconds = driver.call_timed(cg, p)
    progress.update(1)
    runs = [driver.method_run(CG_NAME, "—", out, seconds, every)]
    # A grid is one vmapped call: on these problems every lane runs about as long.
    runs += driver.run_problem(METHODS, _objective, p, every, compiled, progress, label=q.name)
    results.append(
      report.ProblemResult(
        name=q.name,
        label=f"{q.name.split()[0]}, kappa 1e{round(math.log10(q.condition_number))}",
        cap=CAP,
        runs=runs,
        bound=q.lower_bound_iterations(TOL),
        bound_rate=q.q,
        info=dict(
          dim=q.dim,
          condition_number=q.condition_number,
          lipschitz=q.lipschitz,
          strong_convexity=q.strong_convexity,
          q=q.q,
          seed=SEED,
        ),
      )
    )

  description = f"""
f(x) = 1/2 (x - x*)^T A (x - x*), A = Q diag(lambda) Q^T with Q a Haar-random rotation
(`problems.quadratics.make_quadratic`, seed {SEED}), n = {DIM}, lambda from 1 to kappa
({"log- and linearly spaced" if mode == "full" else "log-spaced"}), x* ~ N(0, I), x0 = 0, float64.
Cap {CAP:,} iterations. N_LB = ceil(ln(1/eps) / ln(1/q)), q = (sqrt(kappa)-1)/(sqrt(kappa)+1).
Gradient evaluations count matrix-vector products for CG and line-search calls for L-BFGS;
wall time excludes compilation and, for a learning-rate grid, covers the whole (vmapped) grid.
sgd-nesterov lr grid {SGD_GRID}; adam lr grid {ADAM_GRID}.
"""
  notes = []
  if mode != "full":
    notes.append("Quick mode: log spectrum only (full mode adds the linear spectrum).")
  return driver.suite_result(
    "quadratic",
    "Quadratics, n = 300",
    description,
    "||x_k - x*|| / ||x_0 - x*||",
    mode,
    results,
    notes,
    compiled,
    start,
  )
