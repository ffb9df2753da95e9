"""The spectral (Barzilai-Borwein) gradient step with a non-monotone acceptance test.

A complete step rule, not a step size to put before :func:`nesterov`: a rejected trial point is
left again by the next update, which returns to the last accepted point.
"""

from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import optax

from nag_optax._src import linesearch
from nag_optax._src import numerics
from nag_optax._src import validation

# A rejected trial's step is cut to the minimiser of the quadratic that the two directional
# derivatives along it imply, kept within [0.1, 0.5] of the rejected step (the safeguard of
# Raydan's GBB); a trial whose gradient or value is not finite cuts it to 0.1.
MIN_CUT = 0.1
MAX_CUT = 0.5
# The most function evaluations of the first step's backtracking (with value and value_fn).
BACKTRACKING_STEPS = 40


class ScaleBySpectralState(NamedTuple):
  """State of :func:`scale_by_spectral`."""

  count: jax.Array  #: int32: updates taken (each one gradient).
  learning_rate: jax.Array  #: the step of the latest trial: it moved to ``x_ref - step * g_ref``.
  tau: jax.Array  #: ABBmin's adaptive threshold between the long and the short step.
  short_steps: jax.Array  #: the last ``memory`` short (BB2) steps; +inf where unset.
  value_diffs: jax.Array  #: f - f_ref at the last ``window`` accepted points; -inf where unset.
  ref_value: jax.Array  #: the ``value`` at the accepted point (0 on the gradient-only path).
  rejections: jax.Array  #: int32: trial points rejected so far (each cost one update).
  #: ``<s, y> / <s, s>`` of the latest accepted pair: the curvature along the step, negative
  #: where the loss curves down (0 before the first pair).
  pair_curvature: jax.Array
  function_evals: jax.Array  #: int32: value_fn evaluations (the first step's backtracking).
  ref_params: Any  #: the last accepted point ``x_ref``.
  ref_grad: Any  #: the gradient at ``x_ref``.


def scale_by_spectral(
  initial_step: Optional[float] = None,
  *,
  tau: float = 0.8,
  memory: int = 3,
  window: int = 30,
  sufficient_decrease: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
  r"""Spectral gradient steps (ABBmin) globalised by a non-monotone test, gradients only.

  From the last accepted point ``x_r`` with gradient ``g_r`` each update moves to the trial
  point ``x_t = x_r - a g_r``. At the next update, with ``d = x_t - x_r`` and the gradient
  ``g_t`` at ``x_t``, the trial is accepted when the change ``D_t`` of the loss satisfies

  .. math::

    D_t \le \max_{0 \le j < W} \big(f(x_{r-j}) - f(x_r)\big) + c \langle g_r, d \rangle

  over the last ``W = window`` accepted points (the non-monotone test of Grippo, Lampariello
  & Lucidi, with which Raydan globalised the Barzilai-Borwein method; the test works on
  differences, never on a running sum that would lose the small late decreases to rounding).
  With the ``value`` extra argument ``D_t = f(x_t) - f(x_r)`` as measured (the trapezoid rule
  ``<g_r + g_t, d> / 2``, exact on quadratics, where that is below the float resolution of
  ``f``). Without it ``D_t = <g_t, d>``, which bounds the change from above on a convex
  function, and the past values in the test are sums of the same bounds. The bound matters:
  the trapezoid rule alone is blind where the gradient keeps its size and flips its sign (a step
  across the valley of a pseudo-Huber loss from far away measures no change while the loss
  grows with the step), and accepting such steps inflates the remembered values until the
  iterates run away. With the bound, the remembered differences never exceed the true ones on a
  convex function, so every accepted point passes the test with the true values too.

  On acceptance, with ``s = d`` and ``y = g_t - g_r``, the next step is ABBmin's choice between
  the two Barzilai-Borwein steps ``a_1 = <s, s> / <s, y>`` (long) and ``a_2 = <s, y> / <y, y>``
  (short): the smallest ``a_2`` of the last ``memory`` accepted pairs when ``a_2 < tau a_1``
  (and ``tau`` shrinks by 0.9), else ``a_1`` (and ``tau`` grows by 1.1) (Frassoldati, Zanni &
  Zanghirati 2008, with the adaptive threshold of Bonettini, Zanella & Zanni 2009). Where
  ``<s, y> <= 0`` (no positive curvature along ``s``, e.g. on Rosenbrock's slopes) it is
  ``||s|| / ||y||``, the inverse of the local Lipschitz estimate, and where ``y = 0`` the step
  doubles (unless ``s = 0`` too: a zero gradient). On rejection the update returns to ``x_r``
  and tries a shorter step: the minimiser of the quadratic with the directional derivatives
  ``<g_r, d>`` and ``<g_t, d>``, within ``[0.1, 0.5]`` of the rejected step (0.1 where ``g_t``
  or the value is not finite). A rejection costs one update, and a non-finite gradient at a
  trial point is backed out of in the same way
  (wrap it in :func:`stop_when` with ``pass_nonfinite=True``, as ``auto_nag(method="spectral")``
  does, so that the guard lets it; its ``max_nonfinite`` consecutive non-finite trials, each 10x
  shorter, still stop the run). With ``value`` and ``value_fn`` (as :func:`minimize` passes) the
  first step is checked by backtracking, so a wild ``initial_step`` costs a few function
  evaluations once.

  On a quadratic the long step is the inverse Rayleigh quotient of the previous gradient (a
  Cauchy step delayed by one iteration); the method is not a momentum method, yet on
  ill-conditioned quadratics it needs fewer gradients than any fixed-parameter Nesterov
  iteration, because its steps sweep the spectrum. Memory: two parameter-sized buffers (the
  accepted point and its gradient).

  Precision: rounding each iterate to its dtype puts errors into the stiff directions, and a long
  step (about ``1 / mu``) moves them by up to the condition number times their size (a step
  ``1 / L`` only removes them). So it needs ``kappa * eps`` well below the accuracy sought: in
  float32 on ill-conditioned problems it stalls where the Nesterov method does not. Use it in
  float64 (``jax.config.update("jax_enable_x64", True)``) for such problems; ``auto_nag()`` does
  so by itself (spectral steps only with float64 params).

  Args:
    initial_step: the first step; ``None`` for a probe of relative length ``1e-4`` along ``-g``.
    tau: the initial ABBmin threshold, in ``(0, 1)``.
    memory: how many short steps ABBmin takes the minimum of (``>= 1``). It sizes a state
      array: under ``optax.inject_hyperparams`` name it in ``static_args``.
    window: how many accepted values the non-monotone test takes the maximum of (``>= 1``;
      1 makes it monotone). It sizes a state array, as ``memory`` does.
    sufficient_decrease: the constant ``c`` of the test, in ``(0, 1)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``. Its state exposes
    ``learning_rate`` and ``rejections``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> f = lambda x: jnp.sum(jnp.array([1.0, 10.0, 100.0]) * (x - 1.0) ** 2)
    >>> tx = nag_optax.scale_by_spectral()
    >>> x = jnp.zeros(3)
    >>> state = tx.init(x)
    >>> step = jax.jit(lambda x, state: tx.update(jax.grad(f)(x), state, x))
    >>> for _ in range(40):
    ...   updates, state = step(x, state)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 4))
    [1. 1. 1.]

  References:
    Barzilai & Borwein, Two-point step size gradient methods, IMA J. Numer. Anal. 8, 1988.

    Raydan, `The Barzilai and Borwein gradient method for the large scale unconstrained
    minimization problem <https://doi.org/10.1137/S1052623494266365>`_, SIAM J. Optim. 1997.

    Frassoldati, Zanni & Zanghirati, `New adaptive stepsize selections in gradient methods
    <https://doi.org/10.3934/jimo.2008.4.299>`_, J. Ind. Manag. Optim. 2008.
  """
  validation.check_range(
    "initial_step", initial_step, low=0.0, low_inclusive=False, allow_none=True
  )
  validation.check_range("tau", tau, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
  for name, size in (("memory", memory), ("window", window)):
    if isinstance(size, jax.core.Tracer):
      raise TypeError(
        f"{name} sets the size of a state array and cannot be traced: under "
        f"optax.inject_hyperparams pass static_args=('memory', 'window')."
      )
  validation.check_int("memory", memory, low=1, allow_none=False)
  validation.check_int("window", window, low=1, allow_none=False)
  validation.check_range(
    "sufficient_decrease",
    sufficient_decrease,
    low=0.0,
    high=1.0,
    low_inclusive=False,
    high_inclusive=False,
  )

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    return ScaleBySpectralState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=jnp.zeros((), dtype),
      tau=jnp.asarray(tau, dtype),
      short_steps=jnp.full((memory,), jnp.inf, dtype),
      value_diffs=jnp.full((window,), -jnp.inf, dtype).at[0].set(0.0),
      ref_value=jnp.zeros((), dtype),
      rejections=jnp.zeros((), jnp.int32),
      pair_curvature=jnp.zeros((), dtype),
      function_evals=jnp.zeros((), jnp.int32),
      ref_params=optax.tree.zeros_like(params),
      ref_grad=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    del extra_args
    validation.require_params(params, "scale_by_spectral", "the point of the gradient")
    dtype = state.learning_rate.dtype
    first = state.count == 0
    grad = jax.tree.map(lambda g, p: g.astype(p.dtype), updates, params)
    d = optax.tree.sub(params, state.ref_params)
    y = optax.tree.sub(grad, state.ref_grad)
    # One pass over the buffers for every inner product the decision needs.
    slope0, slope1, ss, sy, yy = numerics.sums(
      lambda d, gr, g, y: (gr * d, g * d, d * d, d * y, y * y),
      d,
      state.ref_grad,
      grad,
      y,
      dtype=dtype,
    )
    if value is None:
      # <g_t, d> >= f(x_t) - f(x_r) on a convex function: the change, bounded from above.
      delta = slope1
      value_now = state.ref_value
    else:
      trapezoid = 0.5 * (slope0 + slope1)
      value_now = jnp.asarray(value).astype(dtype)
      measured = value_now - state.ref_value
      resolution = 4 * jnp.finfo(dtype).eps * jnp.maximum(abs(value_now), abs(state.ref_value))
      delta = jnp.where(jnp.abs(measured) <= resolution, trapezoid, measured)
    finite = jnp.isfinite(delta) & jnp.isfinite(slope1) & jnp.isfinite(yy)
    accept = finite & (delta <= jnp.max(state.value_diffs) + sufficient_decrease * slope0)

    # Accepted: the next step from the pair (s, y) = (d, y).
    curved = (sy > 0) & (yy > 0)
    long_step = numerics.safe_div(ss, sy)
    short_step = numerics.safe_div(sy, yy)
    shorts = jnp.where(
      curved, jnp.roll(state.short_steps, 1).at[0].set(short_step), state.short_steps
    )
    take_short = short_step < state.tau * long_step
    spectral = jnp.where(take_short, jnp.min(shorts), long_step)
    lipschitz_step = jnp.sqrt(numerics.safe_div(ss, yy))
    # The gradient did not change: double the step where the point moved (a linear stretch),
    # keep it where it did not (a zero gradient: the run has converged).
    flat_step = jnp.where(ss > 0, 2.0 * state.learning_rate, state.learning_rate)
    accepted_step = jnp.where(curved, spectral, jnp.where(yy > 0, lipschitz_step, flat_step))
    accepted_step = jnp.where(jnp.isfinite(accepted_step), accepted_step, state.learning_rate)
    accepted_tau = jnp.where(curved, jnp.where(take_short, 0.9, 1.1) * state.tau, state.tau)

    # Rejected: back to x_ref with a shorter step.
    cut = jnp.where(finite, numerics.safe_div(-slope0, slope1 - slope0, MAX_CUT), MIN_CUT)
    rejected_step = jnp.clip(cut, MIN_CUT, MAX_CUT) * state.learning_rate

    accept = accept | first
    first_step = linesearch.initial_step(initial_step, params, grad, dtype)
    evals = jnp.zeros((), jnp.int32)
    if value is not None and value_fn is not None:
      # The first step is checked by backtracking (function values only), so a wild
      # initial_step costs a few evaluations once instead of a rejected update per halving.
      first_step, _, evals = linesearch.backtrack(
        value_fn,
        params,
        grad,
        value,
        first_step,
        decrease_factor=0.5,
        sufficient_decrease=0.5,
        max_steps=BACKTRACKING_STEPS,
        dtype=dtype,
        active=first,
      )
    step = jnp.where(first, first_step, jnp.where(accept, accepted_step, rejected_step))
    # Accepted: -step g at the new point. Rejected: back to x_ref, then -step g_ref.
    base_grad = optax.tree.where(accept, grad, state.ref_grad)
    new_updates = jax.tree.map(
      lambda b, dd, u: (-step.astype(b.dtype) * b - jnp.where(accept, 0, dd)).astype(u.dtype),
      base_grad,
      d,
      updates,
    )
    shifted = jnp.roll(state.value_diffs - delta, 1).at[0].set(0.0)
    new_state = ScaleBySpectralState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      learning_rate=step.astype(dtype),
      tau=jnp.where(accept & ~first, accepted_tau, state.tau).astype(dtype),
      short_steps=jnp.where(accept & ~first, shorts, state.short_steps).astype(dtype),
      value_diffs=jnp.where(accept & ~first, shifted, state.value_diffs).astype(dtype),
      ref_value=jnp.where(accept, value_now, state.ref_value).astype(dtype),
      rejections=state.rejections + (~accept).astype(jnp.int32),
      pair_curvature=jnp.where(
        accept & ~first, numerics.safe_div(sy, ss), state.pair_curvature
      ).astype(dtype),
      function_evals=state.function_evals + evals,
      ref_params=optax.tree.where(accept, params, state.ref_params),
      ref_grad=optax.tree.where(accept, grad, state.ref_grad),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
