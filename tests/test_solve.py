"""minimize(): stops where a Python loop over the same iterates would, jit/vmap, aux, NaN."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import StopReason
from problems import quadratics
from tests import loops


def _problem():
  q = quadratics.make_quadratic(20, 100.0, seed=3)
  return q, jnp.asarray(q.x0)


@pytest.mark.parametrize("kind,tol", [("gtol", 1e-6), ("rtol", 1e-8)])
def test_stops_at_first_iterate_meeting_the_tolerance(x64, kind, tol):
  q, x0 = _problem()
  inner = nag_optax.nag(1 / q.lipschitz, 0.8)
  ys, _ = loops.iterates(inner, q.value, x0, 500)
  norms = np.array([np.linalg.norm(np.asarray(q.grad(y))) for y in ys])
  threshold = tol if kind == "gtol" else tol * norms[0]
  k = int(np.flatnonzero(norms <= threshold)[0])
  sol = nag_optax.minimize(q.value, x0, inner, **{kind: tol})
  assert int(sol.steps) == k
  assert sol.stop_reason == StopReason[kind.upper()]
  np.testing.assert_allclose(np.asarray(sol.params), np.asarray(ys[k]), atol=1e-13)
  np.testing.assert_allclose(float(sol.grad_norm), norms[k], rtol=1e-10)
  np.testing.assert_allclose(float(sol.value), float(q.value(ys[k])), rtol=1e-10, atol=1e-30)


def test_reports_max_steps_when_the_loop_runs_out(x64):
  q, x0 = _problem()
  sol = nag_optax.minimize(q.value, x0, nag_optax.nag(1e-4), max_steps=25, gtol=1e-12)
  assert int(sol.steps) == 25 and sol.stop_reason == StopReason.MAX_STEPS
  ys, _ = loops.iterates(nag_optax.nag(1e-4), q.value, x0, 25)
  np.testing.assert_allclose(np.asarray(sol.params), np.asarray(ys[-1]), atol=1e-13)
  np.testing.assert_allclose(float(sol.value), float(q.value(ys[-1])), rtol=1e-12)


def test_plain_optimizer_runs_max_steps():
  sol = nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), optax.sgd(0.1), max_steps=10)
  assert int(sol.steps) == 10 and sol.stop_reason == StopReason.MAX_STEPS


def test_ftol_and_xtol_reasons(x64):
  q, x0 = _problem()
  sol = nag_optax.minimize(q.value, x0, nag_optax.nag(1 / q.lipschitz, 0.8), ftol=1e-10)
  assert sol.stop_reason == StopReason.FTOL
  sol = nag_optax.minimize(q.value, x0, nag_optax.nag(1 / q.lipschitz, 0.8), xtol=1e-8)
  assert sol.stop_reason == StopReason.XTOL


def test_tolerances_and_a_stopping_optimizer_conflict():
  with pytest.raises(ValueError, match="already has a stopping signal"):
    nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), nag_optax.auto_nag(), gtol=1e-3)


def test_default_optimizer_takes_the_tolerances(x64):
  q, x0 = _problem()
  sol = nag_optax.minimize(q.value, x0, gtol=1e-9)
  assert sol.stop_reason == StopReason.GTOL and float(sol.grad_norm) <= 1e-9


def test_pytree_params_args_and_aux(x64):
  target = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array(-1.0)}

  def loss(params, scale):
    residual = jax.tree.map(lambda p, t: p - t, params, target)
    value = scale * sum(jnp.sum(r**2) for r in jax.tree.leaves(residual))
    return value, {"residual_norm": jnp.sqrt(value / scale)}

  params = jax.tree.map(jnp.zeros_like, target)
  sol = nag_optax.minimize(loss, params, has_aux=True, args=(3.0,))
  chex.assert_trees_all_close(sol.params, target, atol=1e-5)
  assert float(sol.aux["residual_norm"]) < 1e-5
  assert sol.stop_reason.converged


def test_jit_and_vmap_each_problem_stops_at_its_own_step(x64):
  curvatures = jnp.array([1.0, 10.0, 100.0, 1000.0])

  def loss(x, a):  # condition numbers 1 .. 1000: auto_nag is scale-free, so vary the shape
    return 0.5 * jnp.sum(jnp.array([1.0, 1.0]) * jnp.array([1.0, a]) * (x - 1.0) ** 2)

  def solve(a):
    return nag_optax.minimize(loss, jnp.zeros(2), nag_optax.auto_nag(rtol=1e-8), args=(a,))

  batched = jax.jit(jax.vmap(solve))(curvatures)
  for i, a in enumerate(curvatures):
    single = solve(a)
    assert int(batched.steps[i]) == int(single.steps)
    np.testing.assert_allclose(np.asarray(batched.params[i]), np.asarray(single.params), rtol=1e-12)
  assert len(set(np.asarray(batched.steps).tolist())) > 1  # they did stop at different steps
  assert np.all(np.asarray(batched.reason) == StopReason.RTOL)


def test_nonfinite_loss_mid_run_stops_with_nonfinite(x64):
  def loss(x):
    value = jnp.sum((x - 3.0) ** 2)
    return jnp.where(x[0] > 1.0, jnp.nan, value)  # NaN past x = 1, on the way to the minimum

  sol = nag_optax.minimize(loss, jnp.zeros(2), nag_optax.nag(0.05), max_steps=1000, gtol=1e-8)
  assert sol.stop_reason == StopReason.NONFINITE
  chex.assert_tree_all_finite(sol.params)
  assert float(sol.params[0]) <= 1.0  # the last point with a finite loss, not the NaN one
  assert np.isfinite(float(sol.value))


def test_callback_reports_progress():
  seen = []
  nag_optax.minimize(
    lambda x: jnp.sum(x**2),
    jnp.ones(3),
    nag_optax.nag(0.1),
    max_steps=50,
    callback=lambda step, value, grad_norm: seen.append(int(step)),
    callback_every=10,
  )
  assert seen == [0, 10, 20, 30, 40, 50]


def test_progress_bar_runs():
  bar = nag_optax.progress_bar(100, disable=True)
  sol = nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(3), callback=bar, max_steps=100)
  bar.close()
  assert sol.stop_reason.converged


def test_bad_arguments():
  with pytest.raises(ValueError, match="max_steps"):
    nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), max_steps=-1)
  with pytest.raises(ValueError, match="fun"):
    nag_optax.minimize(None, jnp.ones(2))


def test_optimistix_optax_minimiser_converges(x64):
  optx = pytest.importorskip("optimistix")
  q, x0 = _problem()
  solver = optx.OptaxMinimiser(nag_optax.auto_nag(rtol=None), rtol=1e-10, atol=1e-10)
  sol = optx.minimise(lambda x, args: q.value(x), solver, x0, max_steps=20_000)
  np.testing.assert_allclose(np.asarray(sol.value), q.x_star, atol=1e-6)


def test_a_second_call_with_the_same_function_does_not_compile_again():
  traces = []

  def loss(x):
    traces.append(1)  # runs only while JAX traces the loop
    return jnp.sum((x - 2.0) ** 2)

  first = nag_optax.minimize(loss, jnp.zeros(3))
  count = len(traces)
  second = nag_optax.minimize(loss, jnp.ones(3))
  assert len(traces) == count  # the cached compiled loop ran; nothing was traced again
  assert first.stop_reason == second.stop_reason == nag_optax.StopReason.RTOL
  nag_optax.minimize(loss, jnp.zeros(4))  # a new shape compiles once more, as jit does
  assert len(traces) > count


def test_stop_reason_of_a_vmapped_solution_is_an_array_of_reasons():
  loss = lambda x, c: jnp.sum((x - c) ** 2)
  sols = jax.vmap(
    lambda c: nag_optax.minimize(
      loss, jnp.zeros(2), args=(c,), max_steps=3, optimizer=nag_optax.nag(0.01)
    )
  )(jnp.ones(3))
  reasons = sols.stop_reason
  assert reasons.shape == (3,)
  assert all(r == nag_optax.StopReason.MAX_STEPS for r in reasons)


def test_a_solution_prints_readably():
  sol = nag_optax.minimize(lambda x: jnp.sum((x - 1.0) ** 2), jnp.zeros(3))
  text = repr(sol)
  assert text.startswith("Solution(RTOL: gradient norm <= rtol")
  assert "steps=" in text and "params=(3,)" in text and "Array(" not in text


def test_minimize_accepts_python_floats_and_scipy_style_args():
  # minimize(loss, 0.0), the scipy-style first try, and a non-tuple args as the one argument.
  sol = nag_optax.minimize(lambda x: (x - 2.0) ** 2, 0.0)
  assert sol.stop_reason.name == "RTOL" and abs(float(sol.params) - 2.0) < 1e-3
  sol = nag_optax.minimize(lambda x: sum((xi - 1.0) ** 2 for xi in x), [0.0, 0.5])
  np.testing.assert_allclose([float(v) for v in sol.params], [1.0, 1.0], atol=1e-3)
  sol = nag_optax.minimize(lambda x, c: jnp.sum((x - c) ** 2), jnp.zeros(3), args=jnp.arange(3.0))
  np.testing.assert_allclose(sol.params, [0.0, 1.0, 2.0], atol=1e-3)
  with pytest.raises(TypeError, match="leaf"):
    nag_optax.minimize(lambda x: (x - 2.0) ** 2, 0)  # a Python int: integer params


def test_minimize_names_the_mistake_in_optimizer_and_has_aux():
  loss = lambda x: jnp.sum(x**2)  # noqa: E731
  with pytest.raises(TypeError, match=r"optimizer .*call the factory"):
    nag_optax.minimize(loss, jnp.ones(3), nag_optax.auto_nag)
  with pytest.raises(TypeError, match="optimizer must be an optax"):
    nag_optax.minimize(loss, jnp.ones(3), 0.1)
  with pytest.raises(ValueError, match="has_aux=True"):
    nag_optax.minimize(lambda x: (jnp.sum(x**2), x), jnp.ones(3))
  with pytest.raises(ValueError, match=r"pair \(loss, aux\)"):
    nag_optax.minimize(loss, jnp.ones(3), has_aux=True)
