"""Plumbing of the step-cost suite: XLA's bytes-accessed ratio and the fusion count, on a small
model. Runs in seconds."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from benchmarks import step_cost
from benchmarks.methods import Method

SGD = Method("sgd-nesterov", lambda: optax.sgd(0.1, 0.9, nesterov=True))


def _small_problem():
  params = {"w": jnp.full((64, 128), 0.5, jnp.float32), "b": jnp.zeros((128,), jnp.float32)}
  value, grad = jax.value_and_grad(step_cost.loss)(params)
  return params, grad, value


def _traffic(method):
  params, grad, value = _small_problem()
  optimizer = method.build()
  state = optimizer.init(params)
  compiled = step_cost.step_fn(method, optimizer).lower(params, state, grad, value).compile()
  plain = step_cost.memory_traffic(compiled, params)
  donated = step_cost.donated_traffic(method, optimizer, params, state, grad, value)
  return plain, donated


def test_sgd_nesterov_bytes_ratio_is_one_fused_pass_or_two():
  plain, donated = _traffic(SGD)
  assert math.isfinite(plain["bytes_ratio"]) and math.isfinite(donated["bytes_ratio"])
  # The floor: params, gradient and momentum read once, params and momentum written once (5);
  # on XLA:CPU the momentum and the params update are two fusions reading g and m twice (7).
  # More than 8 would be an elementwise op that did not fuse.
  assert 5.0 - 1e-6 <= plain["bytes_ratio"] <= 8.0, plain
  # Donating params and state lets XLA write in place (every output leaf, w and b of params and
  # of the momentum, reuses an input); it never adds traffic to this step.
  assert (plain["aliased_outputs"], donated["aliased_outputs"]) == (0, 4)
  assert donated["bytes_ratio"] <= plain["bytes_ratio"] + 1e-6, (plain, donated)
  # At least one fusion per leaf (w and b).
  assert plain["fusions"] >= 2, plain


def test_adam_reads_and_writes_more_than_sgd():
  # Adam's second moment is one more state buffer: one more read and one more write at least.
  assert (
    _traffic(Method("adam", lambda: optax.adam(1e-3)))[0]["bytes_ratio"]
    >= _traffic(SGD)[0]["bytes_ratio"] + 2.0 - 1e-6
  )


class _FakeCompiled:
  def __init__(self, costs, text):
    self._costs, self._text = costs, text

  def cost_analysis(self):
    return self._costs

  def as_text(self):
    return self._text


HLO = """
HloModule jit_step, input_output_alias={ {0}: (0, {}, may-alias) }, entry_computation_layout={}
%fused_computation (param_0: f32[4]) -> f32[4] {
  ROOT %add = f32[4]{0} add(%param_0, %param_0)
}
ENTRY %main (p: f32[4]) -> (f32[4], f32[4]) {
  %fusion = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%fused_computation
  %fusion.1 = f32[4]{0} fusion(f32[4]{0} %fusion), kind=kLoop, calls=%fused_computation
  ROOT %tuple = (f32[4]{0}, f32[4]{0}) tuple(%fusion, %fusion.1)
}
"""


def test_cost_analysis_as_a_dict_or_a_list_of_dicts():
  params = {"x": jnp.zeros((4,), jnp.float32)}  # 16 bytes
  as_dict = step_cost.memory_traffic(_FakeCompiled({"bytes accessed": 48.0}, HLO), params)
  as_list = step_cost.memory_traffic(_FakeCompiled([{"bytes accessed": 48.0}], HLO), params)
  assert as_dict == as_list == {"bytes_ratio": 3.0, "fusions": 2, "aliased_outputs": 1}
  # Two programs: the bytes add up.
  two = _FakeCompiled([{"bytes accessed": 16.0}, {"bytes accessed": 32.0}], HLO)
  assert step_cost.bytes_accessed(two) == 48.0


def _holding(dtype):
  """A transformation whose state is one buffer of ``dtype`` shaped like the params."""
  return optax.GradientTransformation(
    lambda params: optax.tree.zeros_like(params, dtype),
    lambda updates, state, params=None: (updates, state),
  )


def test_state_counts_bytes_in_float32_buffers():
  params, _, _ = _small_problem()
  assert step_cost.state_buffers(_holding(jnp.float32), params) == 1.0
  # A bfloat16 buffer is half a float32 one.
  assert step_cost.state_buffers(_holding(jnp.bfloat16), params) == 0.5
  # Adam: two float32 moments and an int32 counter (4 bytes over 8,320 parameters).
  assert step_cost.state_buffers(optax.adam(1e-3), params) == 2.0 + 1 / (64 * 128 + 128)


def _table(**rows):
  """A hand-made goal table: row -> (best_s, median_s, buffers, bytes_ratio)."""
  return {
    name: dict(best_s=t, median_s=m, buffers=b, bytes_ratio=r, donated_bytes_ratio=r)
    for name, (t, m, b, r) in rows.items()
  }


def test_a_goal_is_met_when_every_criterion_holds_and_missed_otherwise():
  goal = step_cost.Goal(
    "lean",
    (
      step_cost.Criterion("buffers", "lean", "buffers", 1.25),
      step_cost.Criterion("time / plain's", "lean", "best_s", 1.3, "plain", timing=True),
      step_cost.Criterion("bytes / plain's", "lean", "bytes_ratio", 1.3, "plain"),
    ),
  )
  plain = (1.0, 2.0, 1.0, 10.0)
  met, line = step_cost.judge(goal, _table(plain=plain, lean=(1.1, 2.2, 1.12, 12.0)))
  assert met and line.startswith("lean meets its goal:"), line
  assert "time / plain's 1.10 (median 1.10; at most 1.3: meets)" in line, line
  # Bytes 1.4x the plain one's: that criterion misses, and so does the goal; the time, 1.25x,
  # is within 10% of its bound and says so.
  met, line = step_cost.judge(goal, _table(plain=plain, lean=(1.25, 2.5, 1.12, 14.0)))
  assert not met and line.startswith("lean misses its goal:"), line
  assert "bytes / plain's 1.40 (at most 1.3: misses)" in line, line
  assert "time / plain's 1.25 (median 1.25; at most 1.3: meets, within timing noise)" in line
  # Far from the bound by the best steps, but the medians' ratio falls on the other side.
  met, line = step_cost.judge(goal, _table(plain=plain, lean=(1.6, 2.4, 1.12, 12.0)))
  assert not met
  assert "time / plain's 1.60 (median 1.20; at most 1.3: misses, within timing noise)" in line
  # Scalars add a few bytes to a state: 1.25 buffers and a counter still meet "at most 1.25".
  met, _ = step_cost.judge(goal, _table(plain=plain, lean=(1.0, 2.0, 1.25 + 1e-6, 10.0)))
  assert met


def test_the_goals_name_rows_the_suite_measures():
  table = _table(**{m.name: (1.0, 1.0, 1.0, 1.0) for m in step_cost.METHODS})
  subjects = [goal.subject for goal in step_cost.goals()]
  assert subjects == [
    "auto_nadamw() at its defaults",
    "auto_nadamw(factored=True)",
    "auto_nag_sgd()",
    "auto_nag",
  ]
  # Every method as fast and as small as sgd-nesterov: every goal is met.
  assert all(step_cost.judge(goal, table)[0] for goal in step_cost.goals())
  assert set(step_cost.COUNTERPARTS) | set(step_cost.COUNTERPARTS.values()) <= set(table)


@pytest.mark.parametrize("spec", step_cost.SMALL_MODELS, ids=lambda spec: spec.name)
def test_the_small_models_build_and_take_one_nnx_training_step(spec):
  model = spec.make()
  params = nnx.state(model, nnx.Param)
  # The README's Linear(4, 1): kernel and bias; the CNN: two convolutions and two dense layers.
  assert len(jax.tree.leaves(params)) == {"nnx.Linear(4, 1)": 2, "CNN": 8}[spec.name]
  before = jax.tree.map(jnp.copy, jax.tree.leaves(params))
  tx = optax.adamw(1e-3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  # The leaves counted from eval_shape are those the nnx.Optimizer holds.
  assert step_cost.state_leaves(tx, model) == len(jax.tree.leaves(nnx.state(optimizer.opt_state)))
  x, y = spec.batch()
  loss = step_cost.nnx_train_step(spec.loss)(model, optimizer, x, y)
  assert loss.shape == () and jnp.isfinite(loss)
  after = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(not jnp.array_equal(a, b) for a, b in zip(after, before))


def test_small_model_timing_and_goal_on_one_model():
  methods = [m for m in step_cost.SMALL_METHODS if m.name in (step_cost.ADAMW, step_cost.BASELINE)]
  measured = step_cost.time_small_models(step_cost.SMALL_MODELS[:1], methods, rounds=2)
  name = step_cost.SMALL_MODELS[0].name
  assert set(measured) == {(name, m.name) for m in methods}
  for r in measured.values():
    assert len(r["times_s"]) == 2 and 0 < r["best_s"] <= r["median_s"] and r["finite"]
  # adamw: a counter and two moments per leaf (kernel, bias); SGD momentum: one per leaf.
  assert measured[name, step_cost.ADAMW]["state_leaves"] == 1 + 2 * 2
  assert measured[name, step_cost.BASELINE]["state_leaves"] == 2
