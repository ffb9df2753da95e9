"""Plumbing of the full-batch suite: the problems are what their labels say (finite, convex
where claimed, non-convex where claimed), and the suite's driver and ratio table run. Runs in
seconds."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from benchmarks import fullbatch


@pytest.fixture(scope="module")
def problems():
  with jax.enable_x64(True):
    yield fullbatch.problems("full")


def _smallest_hessian_eigenvalue(problem, points):
  """The least eigenvalue of the dense Hessian over ``points`` (one compilation for all)."""
  unravel = ravel_pytree(points[0])[1]
  hessian = jax.jit(jax.hessian(lambda v: problem.fun(unravel(v))))
  return min(np.linalg.eigvalsh(np.asarray(hessian(ravel_pytree(x)[0])))[0] for x in points)


def test_problems_are_finite_float64_and_labelled_uniquely(problems):
  assert len(problems) == 11 and sum(p.convex for p in problems) == 5
  assert len({p.label for p in problems}) == len(problems)
  with jax.enable_x64(True):
    for p in problems:
      value, grad = jax.jit(jax.value_and_grad(p.fun))(p.x0)
      leaves = jax.tree.leaves(grad)
      assert np.isfinite(float(value)), p.name
      assert all(leaf.dtype == jnp.float64 and np.all(np.isfinite(leaf)) for leaf in leaves)
      assert sum(float(jnp.sum(leaf**2)) for leaf in leaves) > 0, p.name  # x0 is not a solution


def test_convex_problems_have_psd_hessians_and_the_others_do_not_everywhere(problems):
  key = jax.random.PRNGKey(0)
  with jax.enable_x64(True):
    for p in problems:
      flat, unravel = ravel_pytree(p.x0)
      if flat.size > 1200:  # the digits MLP's 2,442 weights: a dense Hessian is too slow here
        continue
      away = unravel(flat + jax.random.normal(key, flat.shape))
      smallest = _smallest_hessian_eigenvalue(p, (p.x0, away))
      if p.convex:
        assert smallest >= -1e-10, p.name
      else:
        assert smallest < -1e-6, p.name


def test_a_run_fills_the_ratio_table(problems, monkeypatch):
  class Progress:
    total: Optional[float] = 0

    def refresh(self):
      pass

    def update(self, n):
      pass

    def set_postfix_str(self, s):
      pass

  # The default and the Nesterov method on both paths (the table's columns), on a convex
  # problem and a non-convex one; no L-BFGS.
  chosen = [p for p in problems if p.label in ("lsq wine", "quartic")]
  monkeypatch.setattr(fullbatch, "problems", lambda mode: chosen)
  monkeypatch.setattr(fullbatch, "METHODS", fullbatch.METHODS[:4])
  suite = fullbatch.run("quick", Progress())
  assert [p.label for p in suite.problems] == ["lsq wine", "quartic"]
  for p in suite.problems:
    assert [r.method for r in p.runs] == [m.name for m in fullbatch.METHODS]
    assert all(r.reached for r in p.runs), p.label
  assert "| geometric mean | convex |" in suite.description
  assert "| geometric mean | non-convex |" in suite.description
  assert suite.notes and "Quick mode" in suite.notes[0]
