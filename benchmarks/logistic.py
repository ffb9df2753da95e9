"""Logistic-regression suite: L2-regularised logistic regression on scikit-learn data.

breast_cancer (binary, 569 x 30) and digits (10-class softmax, 1797 x 64), features standardised
(``StandardScaler``) plus a bias column, lambda 1e-2 and 1e-4, x0 = 0, float64:

  f(w) = mean_i loss(x_i^T w, y_i) + lambda / 2 ||w||^2   (the bias weight is regularised too).

Every method runs until ||grad f(x_k)|| <= 1e-6 ||grad f(x_0)||, cap 20,000 iterations.
nag_optax's ``auto_nag`` runs through ``nag_optax.minimize`` (its own stopping signal, rtol 1e-6,
must be what stopped it) and gradient-only through the shared driver; the peers run through
``driver.run_to_target`` (L-BFGS the way it is meant to, sgd + backtracking and jaxopt's FISTA with
their own evaluation counts). The data and lambda are traced, so the two lambdas of a data set
share one compilation per method; a learning-rate grid is one `lax.map` call.
"""

import dataclasses
import math
import time
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from benchmarks import driver
from benchmarks import report
from benchmarks.methods import Method
from problems import quadratics

TOL = driver.TOL
CAP = 20_000
LAMBDAS = (1e-2, 1e-4)
DATASETS = ("breast_cancer", "digits")
RECORD_EVERY = driver.record_every(CAP)

# Half-decade grids that bracket the best rates (sgd-nesterov: 3 and 10, adam: 0.1 to 1).
SGD_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)

MINIMIZE_NAME = "nag_optax.minimize(auto_nag(rtol=1e-6))"
GRADIENT_ONLY_NAME = "nag_optax.auto_nag() gradient-only (no extra args)"
LBFGS_NAME = driver.lbfgs().name
# L-BFGS with the memory of a first-order method: one curvature pair (with the point and the
# gradient, four parameter-sized buffers; auto_nag's float64 method keeps three) and three pairs.
LBFGS_SMALL_MEMORY = (1, 3)


@dataclasses.dataclass(frozen=True)
class Problem:
  dataset: str
  lam: float
  features: np.ndarray  # standardised, with a bias column of ones
  labels: np.ndarray  # {0, 1} (binary) or one-hot (multiclass)
  classes: int

  @property
  def name(self) -> str:
    n, d = self.features.shape
    kind = f"{self.classes} classes" if self.classes > 2 else "binary"
    return f"{self.dataset} lambda={self.lam:g} ({n}x{d}, {kind})"

  @property
  def label(self) -> str:
    return f"{self.dataset}, lambda {self.lam:g}"

  @property
  def x0(self) -> np.ndarray:
    shape = (
      (self.features.shape[1],) if self.classes == 2 else (self.features.shape[1], self.classes)
    )
    return np.zeros(shape)


def load(dataset: str, lam: float) -> Problem:
  from sklearn import datasets
  from sklearn import preprocessing

  x, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
  x = preprocessing.StandardScaler().fit_transform(x.astype(np.float64))
  x = np.hstack([x, np.ones((x.shape[0], 1))])
  classes = int(y.max()) + 1
  labels = y.astype(np.float64) if classes == 2 else np.eye(classes)[y]
  return Problem(dataset, lam, x, labels, classes)


def problems(mode: str) -> list[Problem]:
  lams = LAMBDAS if mode == "full" else LAMBDAS[:1]
  return [load(d, lam) for d in DATASETS for lam in lams]


def problem_data(q: Problem) -> dict:
  """The traced inputs of every solver: features, labels, lambda, x0 and the driver's target
  (tol, max_steps, record_every)."""
  return dict(
    features=jnp.asarray(q.features),
    labels=jnp.asarray(q.labels),
    lam=jnp.asarray(q.lam),
    x0=jnp.asarray(q.x0),
    tol=jnp.asarray(TOL),
    max_steps=jnp.asarray(CAP, jnp.int32),
    record_every=jnp.asarray(RECORD_EVERY, jnp.int32),
  )


def lower_bound_at_solution(q: Problem, iterations: int = 400) -> dict:
  """Condition number of the Hessian at the solution and the first-order lower bound it implies.

  The solution is ``optax.lbfgs()`` run for ``iterations`` steps (one jitted scan; it reaches
  the float64 floor of the gradient long before); ``kappa* = lambda_max / lambda_min`` of the
  Hessian there, and ``N_LB* = ceil(ln(1/TOL) / ln(1/q*))``, ``q* = (sqrt(kappa*) - 1) /
  (sqrt(kappa*) + 1)``: the iterations the worst case of a first-order method needs near the
  solution. L-BFGS is not held to it on one instance (like CG it adapts to the spectrum).
  """
  d = problem_data(q)
  fun = lambda w: loss(w, d)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry, _):
    w, state = carry
    value, grad = value_and_grad(w, state=state)
    updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=fun)
    return (optax.apply_updates(w, updates), state), None

  solve = jax.jit(lambda w: jax.lax.scan(step, (w, opt.init(w)), None, length=iterations)[0][0])
  w = solve(d["x0"])
  shape = d["x0"].shape
  hessian = jax.jit(jax.hessian(lambda flat: fun(flat.reshape(shape))))(w.ravel())
  eig = np.linalg.eigvalsh(np.asarray(hessian))
  kappa = float(eig[-1] / eig[0])
  return dict(
    kappa_at_solution=kappa,
    lower_bound_at_solution=quadratics.lower_bound_iterations(kappa, TOL),
    grad_norm_at_solution=float(jnp.linalg.norm(jax.grad(fun)(w))),
  )


def loss(w, d):
  """Mean logistic (softmax) loss + lambda/2 ||w||^2."""
  z = d["features"] @ w
  if w.ndim == 1:
    data = jnp.mean(jax.nn.softplus(z) - d["labels"] * z)
  else:
    data = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(d["labels"] * z, axis=1))
  return data + 0.5 * d["lam"] * jnp.sum(w * w)


def _objective(d):
  fun = lambda w: loss(w, d)
  return fun, driver.relative_gradient_norm(fun, d["x0"])


# ---------------------------------------------------------------------------------------------
# Solvers of their own: solve(d, learning_rate) -> driver.RunResult, each traced once per data-set
# shape (the Optax methods run through driver.solver, the shared driver).


# optax's default max_learning_rate = 1 keeps the step below 1/L on these problems, so that the
# line search could never find the step a well-tuned method takes; raised.
BACKTRACKING_MAX_LR = 1e3


def _backtracking_solver(d, learning_rate):
  """``sgd(1) + scale_by_backtracking_linesearch`` (increase factor 1.5, max_learning_rate 1e3):
  the driver's value and gradient (one each) plus the line search's trial values
  (``num_linesearch_steps``)."""
  del learning_rate
  fun, metric = _objective(d)
  opt = optax.chain(
    optax.sgd(1.0),
    optax.scale_by_backtracking_linesearch(
      max_backtracking_steps=15, max_learning_rate=BACKTRACKING_MAX_LR
    ),
  )

  def step(carry):
    w, state, trials = carry
    value, grad = jax.value_and_grad(fun)(w)
    updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=fun)
    trials = trials + jnp.asarray(optax.tree.get(state, "num_linesearch_steps"), jnp.int32)
    return optax.apply_updates(w, updates), state, trials

  carry = (d["x0"], opt.init(d["x0"]), jnp.asarray(0, jnp.int32))
  (_, _, trials), result = driver.iterate_to_target(
    step, carry, lambda c: metric(c[0]), tol=TOL, max_steps=CAP, record_every=RECORD_EVERY
  )
  return result._replace(
    grad_evals=result.steps, function_evals=result.steps + jnp.asarray(trials, jnp.int32)
  )


FISTA_DECREASE = 0.5  # jaxopt's default decrease_factor


def _fista_solver(d, learning_rate):
  """jaxopt FISTA with backtracking, driven iteration by iteration (init_state/update) to the
  gradient-norm target at its iterate x_k (jaxopt's own tol is on ||x_k - x_{k-1}|| / step).

  One value and gradient at the extrapolated point per iteration; the line search evaluates f at
  each trial step s, s d, s d^2, ... (d = decrease factor) and stores the accepted one divided by d,
  so the trials of an iteration are 1 + log(s_start / s_accepted) / log(1/d)."""
  del learning_rate
  import jaxopt

  fun, metric = _objective(d)
  solver = jaxopt.ProximalGradient(
    fun=fun,
    prox=jaxopt.prox.prox_none,
    acceleration=True,
    decrease_factor=FISTA_DECREASE,
    maxiter=CAP,
    tol=0.0,
  )

  def step(carry):
    w, state, trials = carry
    start = state.stepsize
    w, state = solver.update(w, state, None)
    accepted = jnp.where(state.stepsize == 1.0, start, state.stepsize * FISTA_DECREASE)
    extra = jnp.round(jnp.log(start / accepted) / jnp.log(1.0 / FISTA_DECREASE))
    return w, state, trials + 1 + jnp.maximum(extra, 0).astype(jnp.int32)

  carry = (d["x0"], solver.init_state(d["x0"], None), jnp.asarray(0, jnp.int32))
  (_, _, trials), result = driver.iterate_to_target(
    step, carry, lambda c: metric(c[0]), tol=TOL, max_steps=CAP, record_every=RECORD_EVERY
  )
  return result._replace(grad_evals=result.steps, function_evals=trials)


def _minimize_solver(callback: Optional[Callable[[Any, Any, Any], Any]] = None):
  """``nag_optax.minimize(loss, x0, auto_nag(rtol=1e-6))``: the library's own solver loop and
  stopping signal. Returns (Solution, ||grad f(x0)||)."""

  def solve(d):
    sol = nag_optax.minimize(
      loss,
      d["x0"],
      nag_optax.auto_nag(rtol=TOL),
      max_steps=CAP,
      args=(d,),
      callback=callback,
      callback_every=RECORD_EVERY,
    )
    initial = jnp.linalg.norm(jax.grad(loss)(d["x0"], d))
    return sol, initial

  return solve


# make(d, learning_rate) -> optimizer, run by the shared driver; or a solver of its own.
METHODS = (
  Method(
    GRADIENT_ONLY_NAME,
    lambda d, lr: nag_optax.auto_nag(rtol=None),
    pass_extra_args=False,
  ),
  # The Nesterov method (auto_nag's float32 method): in float64 the default runs spectral steps
  # until the loss curves down, which it never does on these convex problems.
  Method(
    'auto_nag(method="nesterov") gradient-only',
    lambda d, lr: nag_optax.auto_nag(method="nesterov", rtol=None),
    pass_extra_args=False,
  ),
  *driver.tuned_baselines(SGD_GRID, ADAM_GRID),
  driver.lbfgs(),
  *(driver.lbfgs(memory_size=m) for m in LBFGS_SMALL_MEMORY),
  Method("sgd(1) + scale_by_backtracking_linesearch", needs="f values", solve=_backtracking_solver),
  Method("optax.contrib.prodigy()", lambda d, lr: optax.contrib.prodigy()),
  Method(
    "jaxopt FISTA + backtracking (ProximalGradient, prox_none)",
    needs="f values",
    solve=_fista_solver,
  ),
)


def _run_minimize(d: dict, compiled: driver.Compiled, key: Any) -> tuple:
  """The minimize row: timed without a callback; the plot's history from a second run that
  records ||grad|| every RECORD_EVERY steps through minimize's callback."""
  program = compiled.get(key, MINIMIZE_NAME, _minimize_solver(), d)
  (sol, initial), seconds = driver.call_timed(program, d)
  recorded = {}
  history_fn = jax.jit(
    _minimize_solver(
      lambda step, value, grad_norm: recorded.__setitem__(int(step), float(grad_norm))
    )
  )
  jax.block_until_ready(history_fn(d))
  history = [np.nan] * (max(recorded, default=0) // RECORD_EVERY + 1)
  for step, grad_norm in recorded.items():
    if step % RECORD_EVERY == 0:
      history[step // RECORD_EVERY] = grad_norm / float(initial)
  reason = nag_optax.StopReason(int(sol.reason))
  metric = float(sol.grad_norm) / float(initial)
  function_evals = sum(
    int(c) for _, c in optax.tree_utils.tree_get_all_with_path(sol.state, "function_evals")
  )
  steps = int(sol.steps)
  result = driver.RunResult(
    steps=steps,
    reached=(reason == nag_optax.StopReason.RTOL) and metric <= TOL,
    diverged=not math.isfinite(metric),
    metric=metric,
    grad_evals=steps,
    function_evals=function_evals,
    history=np.asarray(history, dtype=float),
  )
  return result, seconds, reason


def _ratio_table(results: list[report.ProblemResult]) -> str:
  """The nag_optax rows' iterations against optax.lbfgs()'s, with L-BFGS at small memory and the
  lower bound at the solution."""
  lines = [
    "| problem | minimize(auto_nag) | auto_nag gradient-only | optax.lbfgs | "
    "ratio (minimize) | ratio (gradient-only) | lbfgs, 1 pair (grad evals) | "
    "lbfgs, 3 pairs (grad evals) | kappa at w* | N_LB at w* |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  cell = driver.iterations_cell
  with_evals = lambda r: f"{r.steps:,} ({r.grad_evals:,})" if r.reached else "-"
  for p in results:
    by = {r.method: r for r in p.runs}
    a, g, l = by[MINIMIZE_NAME], by[GRADIENT_ONLY_NAME], by[LBFGS_NAME]
    small = " | ".join(with_evals(by[driver.lbfgs(m).name]) for m in LBFGS_SMALL_MEMORY)
    lines.append(
      f"| {p.label} | {cell(a)} | {cell(g)} | {cell(l)} | "
      f"{driver.ratio_cell(driver.ratio(a, l))} | {driver.ratio_cell(driver.ratio(g, l))} | "
      f"{small} | {p.info['kappa_at_solution']:,.0f} | {p.info['lower_bound_at_solution']:,} |"
    )
  return "\n".join(lines)


def run(mode: str, progress: report.Progress) -> report.SuiteResult:
  start = time.perf_counter()
  qs = problems(mode)
  report.add_runs(progress, len(qs) * (len(METHODS) + 1))
  compiled = driver.Compiled()
  results, notes = [], []
  for q in qs:
    d = problem_data(q)
    progress.set_postfix_str(f"{q.label}: minimize(auto_nag)")
    result, seconds, reason = _run_minimize(d, compiled, (MINIMIZE_NAME, q.dataset))
    runs = [
      driver.method_run(
        MINIMIZE_NAME, "—", result, seconds, RECORD_EVERY, extra=dict(stop_reason=reason.name)
      )
    ]
    if reason != nag_optax.StopReason.RTOL:
      notes.append(f"{q.label}: minimize(auto_nag) stopped with {reason.name}, not RTOL.")
    progress.update(1)
    # A grid is one lax.map, not a vmap: each learning rate stops at its own target (under vmap
    # every lane would run as long as the slowest, up to the cap).
    runs += driver.run_problem(
      METHODS,
      _objective,
      d,
      RECORD_EVERY,
      compiled,
      progress,
      label=q.label,
      key=q.dataset,
      lanes="map",
    )
    # nag_optax rows: iterations / optax.lbfgs iterations, in the note column.
    lbfgs = next(r for r in runs if r.method == LBFGS_NAME)
    for r in runs:
      to_lbfgs = driver.ratio(r, lbfgs)
      if r.method.startswith("nag_optax") and to_lbfgs is not None:
        r.note = f"{to_lbfgs:.2f}x lbfgs iters"
        r.extra["ratio_to_lbfgs_iterations"] = to_lbfgs
    results.append(
      report.ProblemResult(
        name=q.name,
        label=q.label,
        cap=CAP,
        runs=runs,
        info=dict(
          dataset=q.dataset,
          lam=q.lam,
          samples=q.features.shape[0],
          features_with_bias=q.features.shape[1],
          classes=q.classes,
          **lower_bound_at_solution(q),
        ),
      )
    )

  description = f"""
f(w) = mean_i logloss(x_i^T w, y_i) + lambda/2 ||w||^2 on scikit-learn `breast_cancer` (binary
logistic) and `digits` (10-class softmax, weights 65 x 10), features standardised with a bias
column (regularised too), x0 = 0, float64, lambda {
    " and ".join(f"{l:g}" for l in (LAMBDAS if mode == "full" else LAMBDAS[:1]))
  }. Target ||grad f(x_k)|| <= {TOL:g} ||grad f(x_0)||,
cap {CAP:,} iterations. `{MINIMIZE_NAME}` is `nag_optax.minimize` with the optimizer's own stopping
signal (a row counts as reached only when it stopped with reason RTOL); its grad evals are its
steps and its f evals the `function_evals` counters of its state (first-step backtracking).
L-BFGS counts 1 + its zoom line-search steps (value and gradient each); sgd + backtracking one
value and gradient per iteration plus the line search's trial values; jaxopt FISTA one value and
gradient at the extrapolated point plus the line search's trial values (derived from its step-size
sequence). The backtracking's max_learning_rate is raised from optax's default 1 to
{BACKTRACKING_MAX_LR:g} (with 1 the step stays below 1/L here). Wall time excludes compilation;
for a learning-rate grid it covers the whole grid, run one learning rate after the other
(`lax.map`).
sgd-nesterov lr grid {SGD_GRID}; adam lr grid {ADAM_GRID}.

nag_optax iterations relative to `optax.lbfgs()` (which keeps 10 curvature pairs and evaluates
f in a line search), next to the condition number of the Hessian at the solution and the
first-order lower bound N_LB it implies there (`lower_bound_at_solution`): the worst case of a
first-order method near the solution. L-BFGS goes below it on these instances by adapting to
their spectrum in few dimensions (31 and 650), as CG does on a quadratic. With the memory of
a first-order method it does not: `optax.lbfgs(memory_size=1)` keeps one curvature pair (with
the point and gradient, four parameter-sized buffers, auto_nag's float64 method keeps three),
`memory_size=3` three (eight buffers); their iterations (and gradient evaluations, line search
included) are in the table's last L-BFGS columns.

{_ratio_table(results)}
"""
  if mode != "full":
    notes.append("Quick mode: lambda 1e-2 only (full mode adds lambda 1e-4).")
  return driver.suite_result(
    "logistic",
    "L2-regularised logistic regression",
    description,
    "||grad f(x_k)|| / ||grad f(x_0)||",
    mode,
    results,
    notes,
    compiled,
    start,
  )
