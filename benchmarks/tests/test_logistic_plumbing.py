"""The logistic suite's lower bound at the solution, against a direct computation."""

import math

import jax
import numpy as np
import pytest

from benchmarks import logistic


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def test_lower_bound_at_solution_matches_the_hessian_there(x64):
  q = logistic.load("breast_cancer", 1e-2)
  info = logistic.lower_bound_at_solution(q)
  assert info["grad_norm_at_solution"] < 1e-12
  # Direct: at the solution of the binary problem, H = X^T diag(s(1 - s)) X / n + lambda I.
  d = logistic.problem_data(q)
  from scipy import optimize

  res = optimize.minimize(
    lambda w: float(logistic.loss(w, d)),
    np.zeros(q.features.shape[1]),
    jac=lambda w: np.asarray(jax.grad(logistic.loss)(w, d)),
    method="L-BFGS-B",
    options=dict(gtol=1e-12, ftol=0.0, maxiter=10_000),
  )
  x = q.features
  s = 1.0 / (1.0 + np.exp(-x @ res.x))
  h = x.T @ (x * (s * (1 - s))[:, None]) / x.shape[0] + q.lam * np.eye(x.shape[1])
  eig = np.linalg.eigvalsh(h)
  np.testing.assert_allclose(info["kappa_at_solution"], eig[-1] / eig[0], rtol=1e-6)
  root = math.sqrt(eig[-1] / eig[0])
  expected = math.ceil(math.log(1e6) / math.log((root + 1) / (root - 1)))
  assert info["lower_bound_at_solution"] == expected
