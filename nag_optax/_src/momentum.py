"""Lookahead (Nesterov) momentum with constant, convex and strongly convex schedules."""

from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation

SCHEDULES = ("constant", "convex", "strongly_convex")
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
  schedule: Literal["constant", "convex", "strongly_convex"] = "constant",
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
    schedule: ``"constant"``, ``"convex"`` or ``"strongly_convex"``.
    condition_number: ``kappa = L / mu >= 1``; required by ``schedule="strongly_convex"``.
    restart: ``None``, ``"gradient"``, ``"speed"`` or ``"function"``.
    accumulator_dtype: dtype of the momentum buffer; ``None`` uses the dtype of the params.
    min_restart_interval: steps that must pass after a restart before a speed restart can fire.

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
    >>> print(jnp.round(params, 4))
    [ 0.4047 -0.8094]

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
  elif condition_number is not None:
    raise ValueError(
      f'condition_number is only used by schedule="strongly_convex", got schedule={schedule!r}.'
    )
  accumulator_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

  def init_fn(params):
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
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    dtype = state.t.dtype
    t_next = state.t
    if schedule == "constant":
      b = momentum(state.count) if callable(momentum) else momentum
    elif schedule == "convex":
      t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * state.t * state.t))
      b = (state.t - 1.0) / t_next
    else:
      b = momentum_from_condition_number(condition_number)
    b = jnp.asarray(b).astype(dtype)

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
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
