"""Closed-form test problems: quadratics f(x) = 1/2 (x - x*)^T A (x - x*) with a chosen spectrum.

Everything about these problems is known exactly: the minimiser, L, mu, the first-order lower
bound, and (on a diagonal A) the iterates of constant-momentum Nesterov as a 2x2 matrix power per
eigencomponent. The tests and the benchmark runner both use this module.
"""

import dataclasses
import math
from typing import Optional

import jax.numpy as jnp
import numpy as np


def lower_bound_iterations(condition_number: float, eps: float) -> int:
  """N_LB(eps) = ceil(ln(1/eps) / ln(1/q)), q = (sqrt(kappa) - 1) / (sqrt(kappa) + 1): the fewest
  iterations in which a first-order method can reduce ||x - x*|| by eps on the worst function of
  condition number kappa."""
  r = math.sqrt(condition_number)
  return int(math.ceil(math.log(1.0 / eps) / math.log((r + 1.0) / (r - 1.0))))


@dataclasses.dataclass(frozen=True)
class Quadratic:
  """f(x) = 1/2 (x - x_star)^T A (x - x_star) with A = Q diag(eigenvalues) Q^T."""

  matrix: np.ndarray
  eigenvalues: np.ndarray
  x_star: np.ndarray
  x0: np.ndarray
  name: str = "quadratic"

  @property
  def dim(self) -> int:
    return self.x_star.shape[0]

  @property
  def lipschitz(self) -> float:
    return float(np.max(self.eigenvalues))

  @property
  def strong_convexity(self) -> float:
    return float(np.min(self.eigenvalues))

  @property
  def condition_number(self) -> float:
    return self.lipschitz / self.strong_convexity

  @property
  def q(self) -> float:
    """(sqrt(kappa) - 1) / (sqrt(kappa) + 1): the optimal linear rate of first-order methods."""
    r = math.sqrt(self.condition_number)
    return (r - 1.0) / (r + 1.0)

  def lower_bound_iterations(self, eps: float) -> int:
    """N_LB(eps) = ceil(ln(1/eps) / ln(1/q)): no first-order method reaches ||x-x*|| <= eps
    ||x0-x*|| in fewer iterations on the worst quadratic of this condition number."""
    return lower_bound_iterations(self.condition_number, eps)

  def value(self, x):
    """f(x), in jnp so it can be differentiated and jitted."""
    a = jnp.asarray(self.matrix, dtype=x.dtype)
    d = x - jnp.asarray(self.x_star, dtype=x.dtype)
    return 0.5 * jnp.dot(d, a @ d)

  def grad(self, x):
    a = jnp.asarray(self.matrix, dtype=x.dtype)
    return a @ (x - jnp.asarray(self.x_star, dtype=x.dtype))

  def distance_ratio(self, x) -> float:
    return float(
      np.linalg.norm(np.asarray(x, np.float64) - self.x_star)
      / np.linalg.norm(self.x0 - self.x_star)
    )


def spectrum(
  dim: int, condition_number: float, spacing: str = "log", strong_convexity: float = 1.0
) -> np.ndarray:
  """Eigenvalues from mu to mu * kappa, log- or linearly spaced (both ends included)."""
  if spacing == "log":
    return strong_convexity * np.logspace(0.0, np.log10(condition_number), dim)
  if spacing == "linear":
    return strong_convexity * np.linspace(1.0, condition_number, dim)
  raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}.")


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
  """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
  z = rng.standard_normal((dim, dim))
  q, r = np.linalg.qr(z)
  return q * np.sign(np.diag(r))


def make_quadratic(
  dim: int = 300,
  condition_number: float = 1e4,
  *,
  spacing: str = "log",
  rotate: bool = True,
  seed: int = 0,
  strong_convexity: float = 1.0,
  x0: Optional[np.ndarray] = None,
) -> Quadratic:
  """The reference quadratic: x0 = 0, x* ~ N(0, I), A = Q diag(lambda) Q^T."""
  rng = np.random.default_rng(seed)
  eig = spectrum(dim, condition_number, spacing, strong_convexity)
  if rotate:
    q = random_rotation(dim, rng)
    matrix = (q * eig) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
  else:
    matrix = np.diag(eig)
  x_star = rng.standard_normal(dim)
  x0 = np.zeros(dim) if x0 is None else np.asarray(x0, np.float64)
  name = f"{spacing} kappa={condition_number:.0e} n={dim}" + ("" if rotate else " diagonal")
  return Quadratic(matrix=matrix, eigenvalues=eig, x_star=x_star, x0=x0, name=name)


def nesterov_transfer_matrix(eigenvalue: float, step: float, momentum: float) -> np.ndarray:
  """The 2x2 matrix T with (e_{k+1}, m_{k+1}) = T (e_k, m_k) for constant-momentum Nesterov in
  Sutskever form on the eigencomponent e = y - x* with curvature ``eigenvalue``:
  u = -step * eigenvalue * e, m' = b m + u, e' = e + u + b m'."""
  h = step * eigenvalue
  b = momentum
  return np.array([[1.0 - h * (1.0 + b), b * b], [-h, b]])


def best_nesterov_parameters(lipschitz, strong_convexity):
  """The best constant (step, momentum) of Nesterov's method on quadratics with spectrum in
  [mu, L], and its linear rate (Lessard, Recht & Packard 2016): step ``4 / (3 L + mu)``, momentum
  ``(r - 2) / (r + 2)`` with ``r = sqrt(3 kappa + 1)``, rate ``1 - 2 / r``, about
  ``1 - 2 / sqrt(3 kappa)``: in iterations about ``sqrt(3) = 1.73`` times the first-order lower
  bound, against 2 for the textbook pair ``(1/L, q)``. Works on floats and traced jnp scalars."""
  r = jnp.sqrt(3.0 * lipschitz / strong_convexity + 1.0)
  return 4.0 / (3.0 * lipschitz + strong_convexity), (r - 2.0) / (r + 2.0), 1.0 - 2.0 / r


def nesterov_closed_form(
  quadratic: Quadratic, step: float, momentum: float, num_steps: int
) -> np.ndarray:
  """Iterate y_k for k = 0..num_steps of constant-momentum Nesterov on a diagonal quadratic,
  by matrix powers T^k of the per-eigencomponent 2x2 recurrence."""
  if not np.allclose(quadratic.matrix, np.diag(quadratic.eigenvalues)):
    raise ValueError("nesterov_closed_form needs a diagonal quadratic (rotate=False).")
  e0 = quadratic.x0 - quadratic.x_star
  out = np.empty((num_steps + 1, quadratic.dim))
  for i, lam in enumerate(quadratic.eigenvalues):
    t = nesterov_transfer_matrix(lam, step, momentum)
    for k in range(num_steps + 1):
      # T^k by repeated squaring: exact up to O(log k) roundings, independent of the loop below.
      out[k, i] = (np.linalg.matrix_power(t, k) @ np.array([e0[i], 0.0]))[0]
  return out + quadratic.x_star


def nesterov_spectral_radius(quadratic: Quadratic, step: float, momentum: float) -> float:
  """Asymptotic linear rate of constant-momentum Nesterov: max spectral radius over eigenvalues."""
  return max(
    float(np.max(np.abs(np.linalg.eigvals(nesterov_transfer_matrix(lam, step, momentum)))))
    for lam in quadratic.eigenvalues
  )
