"""Lookahead (Nesterov) momentum: constant, convex, strongly convex and adaptive schedules."""

import math
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation

# schedule="adaptive": steps of each run (after a restart) that take FISTA's smaller momentum.
_FISTA_STEPS_AFTER_RESTART = 2
SCHEDULES = ("constant", "convex", "strongly_convex", "adaptive")
RESTARTS = (None, "gradient", "speed", "function")


class NesterovState(NamedTuple):
  """State of :func:`nesterov`."""

  count: jax.Array  #: int32: number of updates taken.
  momentum: jax.Array  #: the momentum b_k used at the latest step (0 at a restart).
  t: jax.Array  #: FISTA sequence t_k for the next step (1 after init or a restart).
  trace: Any  #: buffer m_k = x_k - x_{k-1}, in accumulator_dtype.
  restarts: jax.Array  #: int32: number of restarts so far.
  steps_since_restart: jax.Array  #: int32: steps since the last restart (or init).
  last_step_norm: jax.Array  #: ||m_k||, for the speed restart.
  last_value: jax.Array  #: loss at the previous lookahead point, for the function restart.
  #: ``schedule="adaptive"``: the condition number estimated from the restart intervals
  #: (0 until a restart measured one); unused (0) by the other schedules.
  condition_number: jax.Array


def condition_number_from_restart_interval(steps: Any) -> jax.Array:
  r"""The condition number that ``schedule="adaptive"`` reads from a restart interval.

  ``kappa = (2 K / pi)^2`` for a run of ``K`` steps between gradient restarts. On a quadratic
  with step ``1/L`` and momentum ``b`` near 1 the slowest mode ``mu`` turns with angle
  ``theta ~ sqrt(mu / L)`` per step, and the gradient restart fires about half a turn after the
  previous one, so ``K ~ pi sqrt(kappa)``; the factor 2 on ``sqrt(kappa)`` errs towards more
  momentum, which restart keeps safe.

  Examples:
    >>> import nag_optax
    >>> print(round(float(nag_optax.condition_number_from_restart_interval(157.08))))
    10000
  """
  return jnp.square(2.0 * jnp.asarray(steps) / math.pi)


def momentum_from_condition_number(condition_number: Any) -> jax.Array:
  r"""Nesterov's momentum for a strongly convex function, ``q = (sqrt(kappa)-1)/(sqrt(kappa)+1)``.

  Examples:
    >>> import nag_optax
    >>> print(round(float(nag_optax.momentum_from_condition_number(100.0)), 4))
    0.8182
  """
  root = jnp.sqrt(jnp.asarray(condition_number))
  return (root - 1.0) / (root + 1.0)


def nesterov(
  momentum: optax.ScalarOrSchedule = 0.9,
  *,
  schedule: Literal["constant", "convex", "strongly_convex", "adaptive"] = "constant",
  condition_number: Optional[jax.typing.ArrayLike] = None,
  restart: Optional[Literal["gradient", "speed", "function"]] = None,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
  min_restart_interval: int = 10,
) -> optax.GradientTransformationExtraArgs:
  r"""Lookahead momentum in Sutskever form, with an accelerated schedule and adaptive restart.

  The incoming updates are the step directions ``u_k = -eta_k g_k`` produced by a step-size
  transformation earlier in the chain (e.g. :func:`scale_by_curvature`, or ``optax.scale(-lr)``),
  and ``params`` is the lookahead point ``y_k`` at which ``g_k`` was taken. With ``m`` the buffer
  ``x_k - x_{k-1}`` the update is

  .. math::

    m_{k+1} = b_{k-1} m_k + u_k, \qquad \Delta y_k = u_k + b_k m_{k+1}.

  The momentum ``b_k`` follows ``schedule``:

  * ``"constant"``: ``b_k = momentum`` (a float or an optax schedule of the step count). This is
    exactly ``optax.trace(momentum, nesterov=True)`` followed by a constant scale, and PyTorch's
    ``SGD(nesterov=True, dampening=0)``.
  * ``"convex"``: FISTA's sequence ``t_1 = 1``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``,
    ``b_k = (t_k - 1) / t_{k+1}``; with step ``1/L``,
    ``f(x_k) - f* <= 2 L ||x_0 - x*||^2 / (k+1)^2``.
  * ``"strongly_convex"``: ``b = (sqrt(kappa) - 1) / (sqrt(kappa) + 1)`` from ``condition_number``.
  * ``"adaptive"``: the strongly convex momentum without knowing ``kappa``. FISTA's sequence runs
    until the first restart after at least ``min_restart_interval`` steps; from then on
    ``b = (sqrt(kappa_k) - 1) / (sqrt(kappa_k) + 1)`` with
    ``kappa_k = max(kappa_hat, (2 K_k / pi)^2)``, where ``K_k`` counts the steps since the last
    restart (this one included) and ``kappa_hat`` is the largest ``(2 K / pi)^2`` over the
    completed runs of ``K >= min_restart_interval`` steps
    (:func:`condition_number_from_restart_interval`). The estimate only grows, and grows while a
    run lasts longer than the estimate predicts. The first two steps of every run take FISTA's
    smaller values (0, then 0.28), so the overshoot that caused a restart is not carried on by
    momentum. ``condition_number``, if given, is the initial ``kappa_hat``. It needs a
    ``restart``.

  Adaptive restart (O'Donoghue & Candes 2015; Su, Boyd & Candes 2016) sets ``t <- 1``, drops the
  momentum of the current step (``Delta y_k = u_k``) and zeroes the buffer when

  * ``"gradient"``: ``u_k . m_{k+1} < 0``, i.e. ``g_k . (x_{k+1} - x_k) > 0``: the step went uphill;
  * ``"speed"``: ``||m_{k+1}|| < ||m_k||`` once ``min_restart_interval`` steps have passed since the
    last restart;
  * ``"function"``: the loss ``value`` at the lookahead point increased. It needs the ``value``
    extra argument; without it this restart never fires.

  Args:
    momentum: the constant momentum in ``[0, 1)``, or an optax schedule of the step count. Used by
      ``schedule="constant"`` only.
    schedule: ``"constant"``, ``"convex"``, ``"strongly_convex"`` or ``"adaptive"``.
    condition_number: ``kappa = L / mu >= 1``; required by ``schedule="strongly_convex"``; the
      initial estimate for ``schedule="adaptive"`` (``None``: none, FISTA until a restart).
    restart: ``None``, ``"gradient"``, ``"speed"`` or ``"function"``.
    accumulator_dtype: dtype of the momentum buffer; ``None`` uses the dtype of the params.
    min_restart_interval: steps that must pass after a restart before a speed restart can fire;
      the shortest run that ``schedule="adaptive"`` measures.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its state exposes ``momentum`` (the value used
    at the latest step), ``count`` and ``restarts``.

  Examples:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(
    ...     optax.scale(-0.1), nag_optax.nesterov(schedule="convex", restart="gradient"))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   grads = 2.0 * params
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print([round(float(v), 4) for v in params])
    [0.4047, -0.8094]

  References:
    Nesterov, Introductory Lectures on Convex Optimization, 2004.

    Sutskever et al., `On the importance of initialization and momentum in deep learning
    <https://proceedings.mlr.press/v28/sutskever13.html>`_, 2013.

    Beck & Teboulle, `FISTA <https://doi.org/10.1137/080716542>`_, 2009.

    O'Donoghue & Candes, `Adaptive restart for accelerated gradient schemes
    <https://arxiv.org/abs/1204.3982>`_, 2015.

    Su, Boyd & Candes, `A differential equation for modeling Nesterov's accelerated gradient method
    <https://arxiv.org/abs/1503.01243>`_, 2016.
  """
  validation.check_choice("schedule", schedule, SCHEDULES)
  validation.check_choice("restart", restart, RESTARTS)
  validation.check_float_dtype("accumulator_dtype", accumulator_dtype)
  validation.check_int("min_restart_interval", min_restart_interval, allow_none=False)
  if schedule == "constant":
    validation.check_range("momentum", momentum, low=0.0, high=1.0, high_inclusive=False)
  if schedule == "strongly_convex":
    if condition_number is None:
      raise ValueError('condition_number is required when schedule="strongly_convex".')
    validation.check_range("condition_number", condition_number, low=1.0)
  elif schedule == "adaptive":
    if condition_number is not None:
      validation.check_range("condition_number", condition_number, low=1.0)
    if restart is None:
      raise ValueError(
        'schedule="adaptive" estimates the condition number from restarts: pass restart= '
        '("gradient", "speed" or "function"), got restart=None; schedule="convex" runs without '
        "restarts."
      )
  elif condition_number is not None:
    raise ValueError(
      'condition_number is only used by schedule="strongly_convex" and "adaptive", got '
      f"schedule={schedule!r}."
    )
  accumulator_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    return NesterovState(
      count=jnp.zeros((), jnp.int32),
      momentum=jnp.zeros((), dtype),
      t=jnp.ones((), dtype),
      trace=optax.tree.zeros_like(params, dtype=accumulator_dtype),
      restarts=jnp.zeros((), jnp.int32),
      steps_since_restart=jnp.zeros((), jnp.int32),
      last_step_norm=jnp.zeros((), dtype),
      last_value=jnp.full((), jnp.inf, dtype),
      condition_number=jnp.asarray(
        0.0 if condition_number is None or schedule != "adaptive" else condition_number, dtype
      ),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    del params, extra_args
    dtype = state.t.dtype
    t_next = state.t
    if schedule == "constant":
      b = momentum(state.count) if callable(momentum) else momentum
    elif schedule in ("convex", "adaptive"):
      t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * state.t * state.t))
      b = (state.t - 1.0) / t_next
    else:
      b = momentum_from_condition_number(condition_number)
    b = jnp.asarray(b).astype(dtype)
    # This run's length so far, this step included, and the lower bound on the condition number
    # it implies (read by schedule="adaptive" only; scalars, dropped by XLA elsewhere).
    run_length = jnp.asarray(optax.safe_increment(state.steps_since_restart))
    run_estimate = condition_number_from_restart_interval(run_length.astype(dtype))
    if schedule == "adaptive":
      kappa = jnp.maximum(jnp.maximum(state.condition_number, run_estimate), 1.0)
      strong = momentum_from_condition_number(kappa).astype(dtype)
      # The first two steps of a run re-enter through FISTA's momentum (0, then 0.28): a restart
      # often means the step overshot, and a momentum-free step lets the curvature estimate see
      # it (on a convex function a plain gradient step that goes uphill is longer than 1/L).
      strong = jnp.where(
        state.steps_since_restart < _FISTA_STEPS_AFTER_RESTART, jnp.minimum(strong, b), strong
      )
      b = jnp.where(state.condition_number > 0, strong, b)

    u = optax.tree.cast(updates, accumulator_dtype)

    def accumulate(trace, u, momentum):
      return jax.tree.map(lambda m, x: momentum.astype(m.dtype) * m + x.astype(m.dtype), trace, u)

    def unshared():
      # The restart test's reduction gets its own copy of m_{k+1}: XLA's CPU reduction fusions
      # do not duplicate a producer that the outputs also read, so a shared m_{k+1} would be
      # written out as a whole temporary array and read back. The barrier only hides that the
      # inputs are the same: it copies nothing and the operations are the same, though XLA may
      # round a recomputed m_{k+1} differently (a fused multiply-add), to within rounding.
      trace, momentum_ = jax.lax.optimization_barrier((state.trace, state.momentum))
      return u, accumulate(trace, u, momentum_)

    new_trace = accumulate(state.trace, u, state.momentum)

    if restart is None or (restart == "function" and value is None):
      restarting = jnp.zeros((), bool)
      step_norm = state.last_step_norm
    elif restart == "gradient":
      restarting = numerics.vdot(*unshared(), dtype) < 0
      step_norm = state.last_step_norm
    elif restart == "speed":
      step_norm = numerics.norm(unshared()[1], dtype)
      restarting = jnp.logical_and(
        step_norm < state.last_step_norm, state.steps_since_restart >= min_restart_interval
      )
    else:  # function
      restarting = jnp.asarray(value).astype(dtype) > state.last_value
      step_norm = state.last_step_norm

    b_used = jnp.where(restarting, jnp.zeros_like(b), b)
    new_updates = jax.tree.map(
      lambda x, m, g: (x + b_used.astype(m.dtype) * m).astype(g.dtype), u, new_trace, updates
    )
    new_trace = jax.tree.map(lambda m: jnp.where(restarting, jnp.zeros_like(m), m), new_trace)
    last_value = state.last_value if value is None else jnp.asarray(value).astype(dtype)
    condition_estimate = state.condition_number
    if schedule == "adaptive":
      measured = jnp.logical_and(restarting, run_length >= min_restart_interval)
      condition_estimate = jnp.where(
        measured, jnp.maximum(state.condition_number, run_estimate), state.condition_number
      )
    new_state = NesterovState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      momentum=b_used,
      t=jnp.where(restarting, jnp.ones_like(t_next), t_next).astype(dtype),
      trace=new_trace,
      restarts=state.restarts + restarting.astype(jnp.int32),
      steps_since_restart=jnp.where(
        restarting,
        jnp.zeros_like(state.steps_since_restart),
        optax.safe_increment(state.steps_since_restart),
      ),
      last_step_norm=jnp.where(restarting, jnp.zeros_like(step_norm), step_norm).astype(dtype),
      last_value=last_value,
      condition_number=condition_estimate.astype(dtype),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
