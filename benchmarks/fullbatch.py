"""Full-batch suite: problems no default was chosen on, convex and non-convex.

``auto_nag()``'s float64 default (spectral steps until the loss curves down, then the Nesterov
method) was chosen on the quadratic and logistic suites. This suite judges it, next to the
Nesterov method (``auto_nag(method="nesterov")``, the float32 default) and L-BFGS, on eleven
other problems built from scikit-learn's data or generated, float64, from fixed starts:

- convex: least squares on ``wine`` (13 features + bias, target the class index); ridge
  regression on ``diabetes`` (lambda 1e-3); a pseudo-Huber regression on ``diabetes`` (delta
  0.1, lambda 2e-4); softmax regression on ``wine`` (lambda 1e-3); Poisson regression on
  generated counts (200 x 50, lambda 1e-3);
- non-convex: rank-5 matrix factorisation of a generated 60 x 40 matrix (plus noise, lambda
  1e-4); MLPs with softplus on ``breast_cancer`` (30-32-2), tanh on ``wine`` (14-16-16-3) and
  GELU on ``digits`` (65-32-10) (softmax cross-entropy, L2 on the weights); the 10-D
  Rosenbrock function from 0; a 20-D Styblinski-Tang-type separable quartic.

Every method runs through the shared driver until ``||grad f(x_k)|| <= 1e-6 ||grad f(x_0)||``
(cap 20,000), ``auto_nag`` with ``value`` and ``value_fn`` (as ``nag_optax.minimize`` passes
them) and gradient-only. Quick mode: least squares, ridge, the matrix factorisation and the
quartic.
"""

import math
import time
from typing import Any
from typing import Callable
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import nag_optax
from benchmarks import driver
from benchmarks import report
from benchmarks.methods import Method

TOL = driver.TOL
CAP = 20_000
RECORD_EVERY = driver.record_every(CAP)

DEFAULT_VALUE = "nag_optax.auto_nag() with value"
DEFAULT_GRAD = "nag_optax.auto_nag() gradient-only"
NESTEROV_VALUE = 'auto_nag(method="nesterov") with value'
NESTEROV_GRAD = 'auto_nag(method="nesterov") gradient-only'


class Problem(NamedTuple):
  name: str
  label: str
  convex: bool
  fun: Callable[[Any], Any]
  x0: Any


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's data set ``name``: (features, targets)."""
  from sklearn import datasets

  x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
  return np.asarray(x), np.asarray(y)


def _standardised(features: np.ndarray, bias: bool = True) -> np.ndarray:
  from sklearn import preprocessing

  x = preprocessing.StandardScaler().fit_transform(features)
  return np.hstack([x, np.ones((len(x), 1))]) if bias else x


def _mlp(features, one_hot, width, depth, activation, lam, seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), depth + 1)
  dims = [features.shape[1]] + [width] * depth + [one_hot.shape[1]]
  x0 = [
    {
      "w": jax.random.normal(keys[i], (dims[i], dims[i + 1])) / math.sqrt(dims[i]),
      "b": jnp.zeros(dims[i + 1]),
    }
    for i in range(depth + 1)
  ]

  def fun(params):
    h = features
    for layer in params[:-1]:
      h = activation(h @ layer["w"] + layer["b"])
    z = h @ params[-1]["w"] + params[-1]["b"]
    data = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(one_hot * z, axis=1))
    return data + lam * sum(jnp.sum(layer["w"] ** 2) for layer in params)

  return fun, x0


def problems(mode: str) -> list:
  """The suite's problems (float64 arrays: build them with x64 enabled)."""
  wine_x, wine_y = _load("wine")
  diab_x, diab_y = _load("diabetes")
  bc_x, bc_y = _load("breast_cancer")
  dig_x, dig_y = _load("digits")
  xw, xd = jnp.asarray(_standardised(wine_x)), jnp.asarray(_standardised(diab_x))
  yw = jnp.asarray(wine_y, jnp.float64)
  yd = jnp.asarray((diab_y - diab_y.mean()) / diab_y.std())
  onehot_w = jnp.asarray(np.eye(3)[wine_y])
  xb, onehot_b = jnp.asarray(_standardised(bc_x)), jnp.asarray(np.eye(2)[bc_y])
  xg, onehot_g = jnp.asarray(_standardised(dig_x)), jnp.asarray(np.eye(10)[dig_y])
  rng = np.random.default_rng(0)
  a = rng.standard_normal((200, 50))
  counts = jnp.asarray(rng.poisson(np.exp(0.1 * a @ rng.standard_normal(50))), jnp.float64)
  a = jnp.asarray(a)
  target = jnp.asarray(
    rng.standard_normal((60, 5)) @ rng.standard_normal((5, 40))
    + 0.1 * rng.standard_normal((60, 40))
  )
  ku, kv = jax.random.split(jax.random.PRNGKey(1))

  convex = [
    Problem(
      "least squares, wine (178 x 14)",
      "lsq wine",
      True,
      lambda w: 0.5 * jnp.mean((xw @ w - yw) ** 2),
      jnp.zeros(xw.shape[1]),
    ),
    Problem(
      "ridge, diabetes (442 x 11, lambda 1e-3)",
      "ridge diabetes",
      True,
      lambda w: 0.5 * jnp.mean((xd @ w - yd) ** 2) + 5e-4 * jnp.sum(w * w),
      jnp.zeros(xd.shape[1]),
    ),
    Problem(
      "pseudo-Huber regression, diabetes (delta 0.1, lambda 2e-4)",
      "huber diabetes",
      True,
      lambda w: jnp.mean(jnp.sqrt(1 + (xd @ w - yd) ** 2 / 0.01) - 1) + 1e-4 * jnp.sum(w * w),
      jnp.zeros(xd.shape[1]),
    ),
    Problem(
      "softmax regression, wine (14 x 3, lambda 1e-3)",
      "softmax wine",
      True,
      lambda w: (
        jnp.mean(jax.nn.logsumexp(xw @ w, axis=1) - jnp.sum(onehot_w * (xw @ w), axis=1))
        + 5e-4 * jnp.sum(w * w)
      ),
      jnp.zeros((xw.shape[1], 3)),
    ),
    Problem(
      "Poisson regression, generated (200 x 50, lambda 1e-3)",
      "poisson",
      True,
      lambda w: jnp.mean(jnp.exp(a @ w) - counts * (a @ w)) + 5e-4 * jnp.sum(w * w),
      jnp.zeros(50),
    ),
  ]
  nonconvex = [
    Problem(
      "rank-5 matrix factorisation, generated 60 x 40 (lambda 1e-4)",
      "matrix fact.",
      False,
      lambda p: (
        0.5 * jnp.mean((p["u"] @ p["v"].T - target) ** 2)
        + 1e-4 * (jnp.sum(p["u"] ** 2) + jnp.sum(p["v"] ** 2))
      ),
      {"u": 0.1 * jax.random.normal(ku, (60, 5)), "v": 0.1 * jax.random.normal(kv, (40, 5))},
    ),
    Problem(
      "softplus MLP 31-32-2, breast_cancer (lambda 1e-4)",
      "MLP bc",
      False,
      *_mlp(xb, onehot_b, 32, 1, jax.nn.softplus, 1e-4, 0),
    ),
    Problem(
      "tanh MLP 14-16-16-3, wine (lambda 1e-4)",
      "MLP wine",
      False,
      *_mlp(xw, onehot_w, 16, 2, jnp.tanh, 1e-4, 0),
    ),
    Problem(
      "GELU MLP 65-32-10, digits (lambda 1e-3)",
      "MLP digits",
      False,
      *_mlp(xg, onehot_g, 32, 1, jax.nn.gelu, 1e-3, 0),
    ),
    Problem(
      "Rosenbrock, 10-D from 0",
      "rosenbrock 10",
      False,
      lambda x: jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2),
      jnp.zeros(10),
    ),
    Problem(
      "separable quartic sum(x^4 - 16 x^2 + 5 x) / 40, 20-D from 0.5",
      "quartic",
      False,
      lambda x: jnp.sum(x**4 - 16 * x**2 + 5 * x) / 40,
      jnp.full(20, 0.5),
    ),
  ]
  if mode != "full":
    # The two smallest of each kind (the MLPs take thousands of steps).
    return convex[:2] + [nonconvex[0], nonconvex[-1]]
  return convex + nonconvex


def _with_value(name: str, method: Literal["auto", "nesterov"]) -> Method:
  """``auto_nag(method=method)`` passed ``value`` and ``value_fn``, as ``minimize`` passes them."""
  make = lambda d, lr: nag_optax.auto_nag(method=method, rtol=None)
  return Method(name, make, uses_value=True, count_value=False)


def _gradient_only(name: str, method: Literal["auto", "nesterov"]) -> Method:
  """``auto_nag(method=method)`` given gradients only, as Flax's ``TrainState`` calls it."""
  return Method(
    name, lambda d, lr: nag_optax.auto_nag(method=method, rtol=None), pass_extra_args=False
  )


METHODS = (
  _with_value(DEFAULT_VALUE, "auto"),
  _gradient_only(DEFAULT_GRAD, "auto"),
  _with_value(NESTEROV_VALUE, "nesterov"),
  _gradient_only(NESTEROV_GRAD, "nesterov"),
  driver.lbfgs(),
  driver.lbfgs(memory_size=1),
)


def _ratio_table(results: list[report.ProblemResult]) -> str:
  """The default's iterations against the Nesterov method's, per problem and per kind."""
  lines = [
    "| problem | kind | default with value | Nesterov with value | ratio | default "
    "gradient-only | Nesterov gradient-only | ratio |",
    "|---|---|---|---|---|---|---|---|",
  ]
  ratios = {(c, p): [] for c in (True, False) for p in ("value", "grad")}
  for p in results:
    by = {r.method: r for r in p.runs}
    cells = []
    for path, default, nesterov in (
      ("value", DEFAULT_VALUE, NESTEROV_VALUE),
      ("grad", DEFAULT_GRAD, NESTEROV_GRAD),
    ):
      ratio = driver.ratio(by[default], by[nesterov])
      if ratio is not None:
        ratios[(p.info["convex"], path)].append(ratio)
      cells += [
        driver.iterations_cell(by[default]),
        driver.iterations_cell(by[nesterov]),
        driver.ratio_cell(ratio),
      ]
    kind = "convex" if p.info["convex"] else "non-convex"
    lines.append(f"| {p.label} | {kind} | " + " | ".join(cells) + " |")
  for convex in (True, False):
    kind = "convex" if convex else "non-convex"
    lines.append(
      f"| geometric mean | {kind} | | | {driver.geometric_mean(ratios[(convex, 'value')]):.2f} "
      f"| | | {driver.geometric_mean(ratios[(convex, 'grad')]):.2f} |"
    )
  return "\n".join(lines)


def run(mode: str, progress: report.Progress) -> report.SuiteResult:
  start = time.perf_counter()
  with jax.enable_x64(True):
    qs = problems(mode)
    report.add_runs(progress, len(qs) * len(METHODS))
    compiled = driver.Compiled()
    results = []
    for q in qs:
      objective = lambda d, fun=q.fun: (fun, driver.relative_gradient_norm(fun, d["x0"]))
      d = dict(x0=q.x0, tol=TOL, max_steps=CAP, record_every=RECORD_EVERY)
      runs = driver.run_problem(
        METHODS, objective, d, RECORD_EVERY, compiled, progress, label=q.label, key=q.label
      )
      results.append(
        report.ProblemResult(
          name=q.name, label=q.label, cap=CAP, runs=runs, info=dict(convex=q.convex)
        )
      )

  description = f"""
Problems none of `auto_nag()`'s defaults was chosen on (the default's float64 method was chosen
on the quadratic and logistic suites), float64, fixed starts: convex least squares and ridge
regression, a pseudo-Huber regression, softmax and Poisson regression; non-convex matrix
factorisation, three small MLPs (softplus, tanh, GELU) on scikit-learn data, 10-D Rosenbrock and
a separable quartic (definitions: `benchmarks/fullbatch.py`). Every method runs through the
shared driver until ||grad f(x_k)|| <= {TOL:g} ||grad f(x_0)|| (cap {CAP:,}); `auto_nag` with
`value` and `value_fn` each step (as `nag_optax.minimize` passes them) and gradient-only; the
Nesterov method (`method="nesterov"`, the float32 default) on the same two paths;
`optax.lbfgs()` with its line search, and with one curvature pair.

The default's iterations against the Nesterov method's (ratio below 1: the default is faster):

{_ratio_table(results)}
"""
  notes = []
  if mode != "full":
    notes.append("Quick mode: two convex and two non-convex problems (full mode: 5 + 6).")
  return driver.suite_result(
    "fullbatch",
    "Full-batch problems no default was chosen on",
    description,
    "||grad f(x_k)|| / ||grad f(x_0)||",
    mode,
    results,
    notes,
    compiled,
    start,
  )
