"""stop_when(): each criterion fires at the right step, the non-finite guard, frozen state."""

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


def _drive(tx, fun, x, num_calls, *, with_value=True, grad_override=None, value_override=None):
  """A plain Python optax loop recording params and updates after every call."""
  state = tx.init(x)
  history = []
  for k in range(num_calls):
    v, g = jax.value_and_grad(fun)(x)
    if grad_override is not None and grad_override(k) is not None:
      g = grad_override(k)
    if value_override is not None and value_override(k) is not None:
      v = value_override(k)
    extra = dict(value=v) if with_value else {}
    updates, state = tx.update(g, state, x, **extra)
    x = optax.apply_updates(x, updates)
    history.append((x, updates, state))
  return x, state, history


def _first(condition):
  hits = np.flatnonzero(condition)
  assert hits.size, "the criterion never holds on this run; the test would be vacuous"
  return int(hits[0])


@pytest.mark.parametrize("kind", ["gtol", "rtol"])
def test_gradient_tolerances_stop_at_first_iterate_that_meets_them(x64, kind):
  q, x0 = _problem()
  inner = nag_optax.nag(1 / q.lipschitz, 0.8)
  ys, _ = loops.iterates(inner, q.value, x0, 400)
  grad_norms = np.array([np.linalg.norm(np.asarray(q.grad(y))) for y in ys])
  tol = 1e-6 if kind == "gtol" else 1e-7
  threshold = tol if kind == "gtol" else tol * grad_norms[0]
  k = _first(grad_norms <= threshold)
  x, state, _ = _drive(nag_optax.stop_when(inner, **{kind: tol}), q.value, x0, k + 20)
  assert bool(nag_optax.should_stop(state))
  assert nag_optax.stop_reason(state) == StopReason[kind.upper()]
  assert int(state.count) == k  # no early stop, no late stop
  np.testing.assert_allclose(np.asarray(x), np.asarray(ys[k]), atol=1e-13)


def test_ftol_stops_at_first_small_relative_change(x64):
  q, x0 = _problem()
  inner = nag_optax.nag(1 / q.lipschitz, 0.8)
  ys, _ = loops.iterates(inner, q.value, x0, 400)
  f = np.array([float(q.value(y)) for y in ys])
  change = np.abs(np.diff(f)) <= 1e-8 * np.maximum(np.maximum(np.abs(f[1:]), np.abs(f[:-1])), 1)
  k = _first(change) + 1  # the call at iterate k compares f_k with f_{k-1}
  _, state, _ = _drive(nag_optax.stop_when(inner, ftol=1e-8), q.value, x0, k + 20)
  assert nag_optax.stop_reason(state) == StopReason.FTOL
  assert int(state.count) == k


def test_xtol_applies_the_small_update_then_stops(x64):
  q, x0 = _problem()
  inner = nag_optax.nag(1 / q.lipschitz, 0.8)
  ys, _ = loops.iterates(inner, q.value, x0, 400)
  steps = np.linalg.norm(np.diff(np.asarray(ys), axis=0), axis=1)
  k = _first(steps <= 1e-6)
  x, state, _ = _drive(nag_optax.stop_when(inner, xtol=1e-6), q.value, x0, k + 20)
  assert nag_optax.stop_reason(state) == StopReason.XTOL
  assert int(state.count) == k + 1
  np.testing.assert_allclose(np.asarray(x), np.asarray(ys[k + 1]), atol=1e-13)


def test_max_steps():
  q, x0 = _problem()
  _, state, history = _drive(nag_optax.stop_when(nag_optax.nag(1e-3), max_steps=7), q.value, x0, 12)
  assert int(state.count) == 7
  assert nag_optax.stop_reason(state) == StopReason.MAX_STEPS
  assert [bool(nag_optax.should_stop(h[2])) for h in history] == [False] * 7 + [True] * 5


def test_patience_on_scripted_losses():
  losses = [5.0, 4.0, 3.0, 3.5, 2.9, 3.0, 2.9, 3.1, 2.8, 2.7]
  tx = nag_optax.stop_when(nag_optax.nag(1e-3), patience=3)
  state = tx.init(jnp.zeros(2))
  stopped_at = None
  for k, value in enumerate(losses):
    _, state = tx.update(jnp.ones(2), state, value=jnp.asarray(value))
    if stopped_at is None and bool(state.stop):
      stopped_at = k
  # best 2.9 at call 4; calls 5, 6 (equal is no improvement), 7 do not improve: call 7 fires.
  assert stopped_at == 7
  assert nag_optax.stop_reason(state) == StopReason.PATIENCE


def test_min_learning_rate_floor():
  schedule = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
  inner = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  tx = nag_optax.stop_when(inner, min_learning_rate=0.01)
  state = tx.init(jnp.zeros(2))
  calls = 0
  while not bool(state.stop):
    _, state = tx.update(jnp.ones(2), state)
    calls += 1
    assert calls < 50
  # inject_hyperparams stores schedule(k) at call k; 0.5**7 < 0.01 is stored at call 7 (0-based),
  # so call 8 (the 9th) sees it and stops without applying an update.
  assert calls == 9 and int(state.count) == 8
  assert nag_optax.stop_reason(state) == StopReason.MIN_LEARNING_RATE


def test_min_learning_rate_needs_a_learning_rate_field():
  with pytest.raises(ValueError, match="min_learning_rate"):
    nag_optax.stop_when(nag_optax.nag(0.1), min_learning_rate=1e-3).init(jnp.zeros(2))


def test_nonfinite_gradients_are_skipped_and_params_stay_at_last_good_iterate(x64):
  q, x0 = _problem()
  bad = {5, 9, 10}
  nan = jnp.full(20, jnp.nan)
  tx = nag_optax.stop_when(nag_optax.nag(1 / q.lipschitz, 0.8), max_nonfinite=3)
  _, _, history = _drive(tx, q.value, x0, 15, grad_override=lambda k: nan if k in bad else None)
  for k in bad:
    chex.assert_trees_all_equal(history[k][0], history[k - 1][0])  # params unchanged
    chex.assert_trees_all_equal(history[k][1], jnp.zeros(20))
    chex.assert_trees_all_equal(history[k][2].inner_state, history[k - 1][2].inner_state)
  final_state = history[-1][2]
  assert not bool(final_state.stop)
  assert int(final_state.total_nonfinite) == 3
  assert int(final_state.count) == 12
  chex.assert_tree_all_finite(history[-1][0])


def test_consecutive_nonfinite_stops_with_nonfinite(x64):
  q, x0 = _problem()
  tx = nag_optax.stop_when(nag_optax.nag(1 / q.lipschitz, 0.8), max_nonfinite=4, gtol=1e-12)
  x, state, history = _drive(
    tx,
    q.value,
    x0,
    12,
    grad_override=lambda k: jnp.full(20, jnp.inf) if k >= 3 else None,
    value_override=lambda k: jnp.nan if k >= 3 else None,
  )
  assert nag_optax.stop_reason(state) == StopReason.NONFINITE
  assert not StopReason.NONFINITE.converged
  assert int(state.count) == 3 and int(state.total_nonfinite) == 4
  chex.assert_trees_all_equal(x, history[2][0])
  chex.assert_tree_all_finite(x)


def test_nan_is_never_read_as_convergence(x64):
  q, x0 = _problem()
  tx = nag_optax.stop_when(
    nag_optax.nag(1 / q.lipschitz, 0.8), gtol=1e-3, ftol=1e-3, xtol=1e-3, max_nonfinite=3
  )
  x, state, _ = _drive(
    tx,
    q.value,
    x0,
    6,
    grad_override=lambda k: jnp.full(20, jnp.nan),
    value_override=lambda k: jnp.nan,
  )
  assert nag_optax.stop_reason(state) == StopReason.NONFINITE
  chex.assert_trees_all_equal(x, x0)


def test_stopped_state_emits_zero_updates_and_is_frozen():
  q, x0 = _problem()
  tx = nag_optax.stop_when(nag_optax.nag(1e-2), max_steps=3)
  _, state, _ = _drive(tx, q.value, x0, 3)
  _, state = tx.update(jnp.ones(20), state, x0)
  assert bool(state.stop)
  for g in [jnp.ones(20), -5 * jnp.ones(20), jnp.full(20, jnp.nan)]:
    updates, new_state = tx.update(g, state, x0, value=jnp.asarray(1.0))
    chex.assert_trees_all_equal(updates, jnp.zeros(20))
    chex.assert_trees_all_equal(new_state, state)


def test_fixed_length_scan_is_safe_after_stopping(x64):
  q, x0 = _problem()
  tx = nag_optax.stop_when(nag_optax.nag(1 / q.lipschitz, 0.8), gtol=1e-5)
  xs, state = loops.iterates(tx, q.value, x0, 3000)
  k = int(state.count)
  assert k < 2000
  chex.assert_trees_all_equal(xs[k + 1 :], jnp.broadcast_to(xs[k], xs[k + 1 :].shape))


def test_ftol_and_patience_are_ignored_without_value():
  q, x0 = _problem()
  tx = nag_optax.stop_when(nag_optax.nag(1e-3), ftol=0.5, patience=1)
  with pytest.warns(UserWarning, match="ftol=0.5 and patience=1 never fire without the `value`"):
    _, state, _ = _drive(tx, q.value, x0, 10, with_value=False)
  assert not bool(state.stop)


@pytest.mark.parametrize("wrap", ["chain", "inject", "multisteps", "bare"])
def test_should_stop_finds_the_state_anywhere(wrap):
  tx = nag_optax.stop_when(nag_optax.nag(0.1), max_steps=0)
  if wrap == "chain":
    tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
  elif wrap == "inject":
    tx = optax.inject_hyperparams(
      lambda learning_rate: nag_optax.stop_when(nag_optax.nag(learning_rate), max_steps=0)
    )(learning_rate=0.1)
  elif wrap == "multisteps":
    tx = optax.MultiSteps(tx, every_k_schedule=1)
  state = tx.init(jnp.zeros(2))
  assert not bool(nag_optax.should_stop(state))
  _, state = tx.update(jnp.ones(2), state, jnp.zeros(2))
  assert bool(nag_optax.should_stop(state))
  assert nag_optax.stop_reason(state) is StopReason.MAX_STEPS


def test_helpers_need_a_stop_state():
  with pytest.raises(ValueError, match="stop_when"):
    nag_optax.should_stop(nag_optax.nag(0.1).init(jnp.zeros(2)))


def test_stop_reason_names_and_batched_states():
  assert StopReason.GTOL.converged and not StopReason.MAX_STEPS.converged
  assert "gtol" in StopReason.GTOL.description
  tx = nag_optax.stop_when(nag_optax.nag(0.1), gtol=0.5)
  states = jax.vmap(tx.init)(jnp.zeros((3, 2)))
  grads = jnp.array([[0.1, 0.1], [1.0, 1.0], [0.2, 0.0]])
  _, states = jax.vmap(lambda g, s: tx.update(g, s))(grads, states)
  np.testing.assert_array_equal(nag_optax.should_stop(states), [True, False, True])
  reasons = nag_optax.stop_reason(states)
  assert list(reasons) == [StopReason.GTOL, StopReason.NOT_STOPPED, StopReason.GTOL]
  assert [r.name for r in reasons] == ["GTOL", "NOT_STOPPED", "GTOL"]
  traced = jax.jit(nag_optax.stop_reason)(states)  # inside jit: the int32 codes
  np.testing.assert_array_equal(traced, [1, 0, 1])


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(gtol=-1.0), "gtol"),
    (dict(rtol=float("nan")), "rtol"),
    (dict(ftol=-1e-3), "ftol"),
    (dict(xtol=-1.0), "xtol"),
    (dict(max_steps=-1), "max_steps"),
    (dict(max_steps=1.5), "max_steps"),
    (dict(patience=0), "patience"),
    (dict(max_nonfinite=0), "max_nonfinite"),
    (dict(min_learning_rate=-1.0), "min_learning_rate"),
  ],
)
def test_bad_configuration_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    nag_optax.stop_when(nag_optax.nag(0.1), **kwargs)


def test_inner_must_be_a_transformation():
  # TypeError, as for every argument that must be a transformation.
  with pytest.raises(TypeError, match="inner must be an optax GradientTransformation"):
    nag_optax.stop_when(lambda g: g, gtol=1.0)
  with pytest.raises(TypeError, match=r"call the factory: e\.g\. nag_optax\.nag"):
    nag_optax.stop_when(nag_optax.nag, gtol=1.0)


def test_validation_patience_counts_updates_without_a_new_best_validation_loss():
  # The validation loss is measured every 3 updates and passed at every update (held between
  # measurements): 4.0 at calls 0-2, 3.0 at 3-5, 3.5 at 6-8, 3.2 at 9-11.
  tx = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=5)
  params = jnp.ones(2)
  state = tx.init(params)
  held = [4.0] * 3 + [3.0] * 3 + [3.5] * 3 + [3.2] * 3
  stops = []
  for val in held:
    _, state = tx.update(jnp.ones(2), state, params, validation_loss=jnp.asarray(val))
    stops.append(bool(nag_optax.should_stop(state)))
  # Best 3.0 at call 3; calls 4..8 make 5 without a new best, so call 8 stops (before its step).
  assert stops == [False] * 8 + [True] * 4
  assert nag_optax.stop_reason(state) == nag_optax.StopReason.VALIDATION_PATIENCE
  assert float(state.best_validation) == 3.0


def test_validation_patience_ignores_nan_and_missing_validation_loss():
  tx = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=2)
  params = jnp.ones(2)
  state = tx.init(params)
  _, state = tx.update(jnp.ones(2), state, params, validation_loss=jnp.asarray(jnp.nan))
  assert float(state.best_validation) == float("inf")  # NaN is never a new best
  for _ in range(5):  # no validation_loss: nothing counts (and a warning says so)
    with pytest.warns(UserWarning, match="validation_patience=2 never fires without the `vali"):
      _, state = tx.update(jnp.ones(2), state, params)
  assert not bool(nag_optax.should_stop(state))


def test_stop_when_pass_nonfinite_must_be_a_bool():
  with pytest.raises(TypeError, match="pass_nonfinite"):
    nag_optax.stop_when(nag_optax.scale_by_spectral(), pass_nonfinite="yes")


def test_a_stop_reason_prints_its_name():
  tx = nag_optax.stop_when(nag_optax.nag(0.1), max_steps=0)
  _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
  reason = nag_optax.stop_reason(state)
  assert str(reason) == "MAX_STEPS"
  assert f"stopped: {reason}" == "stopped: MAX_STEPS"
  assert f"{reason:>10}" == " MAX_STEPS"
  assert f"{reason:d}" == "5" and int(reason) == 5


def _validation_stops(tx, losses):
  """Whether the signal has fired after each update fed ``losses`` as ``validation_loss``."""
  params = jnp.ones(2)

  def step(state, val):
    _, state = tx.update(jnp.ones(2), state, params, validation_loss=val)
    return state, nag_optax.should_stop(state)

  state, stops = jax.jit(lambda s, v: jax.lax.scan(step, s, v))(
    tx.init(params), jnp.asarray(losses, jnp.float32)
  )
  return np.asarray(stops), state


def test_a_new_best_must_improve_by_the_minimum_relative_delta():
  # 1.0, then 0.995 (0.5% lower: not a new best with min_delta 1%), then 0.98 (2%: a new best).
  losses = [1.0] + [0.995] * 4 + [0.98] + [0.979] * 6
  tx = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=4, validation_min_delta=0.01)
  stops, state = _validation_stops(tx, losses)
  # Best 1.0 at update 0; 0.995 does not count: updates 1-4 make four without a new best.
  assert stops.tolist() == [False] * 4 + [True] * 8
  plain = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=4)
  stops, _ = _validation_stops(plain, losses)
  assert not stops[:9].any()  # without min_delta 0.995 and 0.98 are bests


def test_the_patience_grows_with_the_step_of_the_best():
  # A best at update 40, then flat: the stop waits max(5, 0.5 * 40) = 20 updates.
  losses = list(np.linspace(2.0, 1.0, 41)) + [1.0] * 40
  tx = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=5, validation_patience_ratio=0.5)
  stops, state = _validation_stops(tx, losses)
  assert int(state.best_validation_step) == 40
  assert int(np.argmax(stops)) == 60  # 20 updates after the best: 1.5x its step
  fixed = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=5)
  assert int(np.argmax(_validation_stops(fixed, losses)[0])) == 45


def test_a_loss_still_falling_by_more_than_min_delta_never_stops():
  losses = 2.0 * 0.97 ** np.arange(300)  # 3% lower at every update
  tx = nag_optax.stop_when(
    nag_optax.nag(0.1),
    validation_patience=5,
    validation_min_delta=0.02,
    validation_patience_ratio=0.5,
  )
  assert not _validation_stops(tx, losses)[0].any()


def test_a_saturated_model_whose_loss_creeps_down_stops():
  # A model that classifies every validation sample right from update 750 on: its loss keeps
  # setting tiny new lows (0.0037 to 0.0026 over 4,250 updates). Without a minimum improvement
  # the patience never runs out; with one the stop comes within 1.5x the step of the best.
  steps = np.arange(5000)
  losses = np.where(
    steps < 750,
    0.0037 * (2.3 / 0.0037) ** (1 - steps / 750),
    0.0037 * (0.0026 / 0.0037) ** ((steps - 750) / 4250),
  )
  plain = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=600)
  assert not _validation_stops(plain, losses)[0].any()
  tx = nag_optax.stop_when(
    nag_optax.nag(0.1),
    validation_patience=100,
    validation_min_delta=0.05,
    validation_patience_ratio=0.5,
  )
  stops, state = _validation_stops(tx, losses)
  assert stops.any() and int(np.argmax(stops)) <= 1.5 * 750


def test_the_validation_stop_warnings_name_the_argument_and_point_at_the_callers_line():
  import warnings

  tx = nag_optax.stop_when(nag_optax.nag(0.1), validation_patience=3)
  params = jnp.ones(2)
  state = tx.init(params)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(lambda s: tx.update(jnp.ones(2), s, params, val_loss=1.0))(state)  # misspelled
  messages = [str(w.message) for w in caught]
  assert any("without the `validation_loss` extra argument" in m for m in messages), messages
  assert any("val_loss=" in m and "did you mean validation_loss=?" in m for m in messages)
  assert not any("value=loss)), or drop" in m for m in messages)  # not the training loss's hint
  assert {w.filename for w in caught} == {__file__}  # this test's line, not a library's
