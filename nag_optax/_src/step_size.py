"""Step sizes without a known Lipschitz constant: curvature (secant) estimates and backtracking.

Each transformation emits ``u = -step * g`` and goes *before* :func:`nesterov` in a chain.
"""

from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import linesearch
from nag_optax._src import numerics
from nag_optax._src import validation

ESTIMATES = ("secant", "cocoercive")


class ScaleByCurvatureState(NamedTuple):
  """State of :func:`scale_by_curvature`."""

  count: jax.Array  #: int32: updates taken.
  learning_rate: jax.Array  #: the step used at the latest update.
  curvature: jax.Array  #: running estimate of L (max of decayed secant estimates); 0 before any.
  peak_curvature: jax.Array  #: the largest two-point estimate seen; L_k never exceeds it.
  function_evals: jax.Array  #: int32: value_fn evaluations so far (first-step backtracking only).
  prev_params: Any  #: the point of the previous gradient.
  prev_grad: Any  #: the previous gradient.


def _secant_curvature(params, prev_params, grad, prev_grad, dtype, estimate="secant"):
  """A curvature estimate from two points and their gradients that never exceeds L.

  ``"secant"``: ``||g_k - g_{k-1}|| / ||y_k - y_{k-1}||``. ``"cocoercive"``:
  ``||g_k - g_{k-1}||^2 / <g_k - g_{k-1}, y_k - y_{k-1}>``, which is at least the secant
  (Cauchy-Schwarz) and at most L for a convex function with L-Lipschitz gradient (co-coercivity,
  ``<dg, dy> >= ||dg||^2 / L``); where ``<dg, dy> <= 0`` (no convexity along the segment) it falls
  back to the secant, as where that quotient is not finite. 0 where the points coincide or the
  secant is not finite.
  """
  dy = optax.tree.sub(params, prev_params)
  dg = optax.tree.sub(grad, prev_grad)
  ds = numerics.norm(dy, dtype)
  dgn = numerics.norm(dg, dtype)
  est = numerics.safe_div(dgn, ds)
  if estimate == "cocoercive":
    # 0 (so the secant stands) where <dg, dy> <= 0 or the quotient is not finite.
    est = jnp.maximum(est, numerics.safe_div(jnp.square(dgn), numerics.vdot(dg, dy, dtype)))
  return est


def scale_by_curvature(
  initial_step: Optional[float] = None,
  *,
  safety: float = 1.0,
  decay: float = 1.0,
  estimate: Literal["secant", "cocoercive"] = "secant",
  backtrack_first_step: bool = True,
  max_backtracking_steps: int = 40,
) -> optax.GradientTransformationExtraArgs:
  r"""Step size from the local curvature seen by consecutive gradients (gradients only).

  With a two-point estimate ``ell_k`` of the curvature between ``y_{k-1}`` and ``y_k`` that never
  exceeds the Lipschitz constant L of the gradient, the curvature estimate and the step are

  .. math::

    L_k = \max(\text{decay} \cdot L_{k-1}, \ell_k), \qquad \eta_k = \text{safety} / L_k,
    \qquad u_k = -\eta_k g_k ,

  except after an uphill move (``<g_k, y_k - y_{k-1}> > 0``), where the forgetting is undone:
  ``L_k = max(min(L_{k-1} / decay, P_k), ell_k)`` with ``P_k`` the largest ``ell`` seen so far.

  With ``decay = 1`` the step only shrinks, and since ``L_k <= L`` it is never below ``safety/L``.
  An underestimate of L lets the stiffest components grow until the secant sees them, which then
  raises ``L_k``: the estimate corrects itself (the power-iteration effect), so the method never
  diverges on a smooth convex function. ``decay < 1`` lets the step grow again where the
  curvature falls (e.g. logistic losses away from the origin): the step grows by at most
  ``1/decay`` per downhill update and shrinks again by ``decay`` per uphill one, never below
  ``safety / P_k >= safety / L``. Without that uphill rule the step would grow without bound
  where the curvature vanishes (pseudo-Huber losses far from the minimum, clipped gradients) and
  the iterates would oscillate with growing amplitude.

  ``estimate`` picks ``ell_k`` (with ``dy = y_k - y_{k-1}``, ``dg = g_k - g_{k-1}``):

  * ``"secant"``: ``||dg|| / ||dy||``.
  * ``"cocoercive"``: ``||dg||^2 / <dg, dy>``, the inverse of the long Barzilai-Borwein step. By
    co-coercivity of a convex L-smooth function (``<dg, dy> >= ||dg||^2 / L``) it never exceeds
    L, and by Cauchy-Schwarz it is at least the secant: on a quadratic with Hessian A it is the
    Rayleigh quotient of A at ``A^{1/2} dy``, which weights the stiff directions that limit the
    step. It is the estimate that makes ``decay < 1`` safe under momentum. Where ``<dg, dy> <= 0``
    it falls back to the secant.

  The first update, before any secant exists, uses ``initial_step`` or, when that is ``None``, a
  probe of relative length ``1e-4`` along ``-g``. When the extra arguments ``value`` and
  ``value_fn`` are passed and ``backtrack_first_step`` is set, that first step is checked by
  sufficient-decrease backtracking (see :func:`scale_by_backtracking`), so any initial guess,
  however large, is safe at the price of a few function evaluations once; later updates evaluate
  nothing. Unlike AdGD's ``1/(2 ell_k)`` with a growth
  limit, this keeps accelerated momentum stable: the step never exceeds the inverse of the
  largest curvature seen. Two parameter-sized buffers (previous point and gradient).

  Args:
    initial_step: the first step; ``None`` for a scale-free probe.
    safety: the step is ``safety / L_k`` (``0 < safety <= 2``).
    decay: forgetting factor of the running maximum, in ``(0, 1]``.
    estimate: ``"secant"`` or ``"cocoercive"`` (see above).
    backtrack_first_step: backtrack the first step when ``value`` and ``value_fn`` are passed.
    max_backtracking_steps: the most function evaluations of that first backtracking.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state exposes ``learning_rate`` and
    ``function_evals``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> f = lambda x: jnp.sum(jnp.array([1.0, 100.0]) * x ** 2)
    >>> tx = optax.chain(nag_optax.scale_by_curvature(), nag_optax.nesterov(schedule="convex"))
    >>> x = jnp.array([1.0, 1.0])
    >>> state = tx.init(x)
    >>> for _ in range(100):
    ...   updates, state = tx.update(jax.grad(f)(x), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(round(float(optax.tree.get(state, "learning_rate")), 6))
    0.005

  References:
    Malitsky & Mishchenko, `Adaptive gradient descent without descent
    <https://arxiv.org/abs/1910.09529>`_, ICML 2020.

    Barzilai & Borwein, Two-point step size gradient methods, IMA J. Numer. Anal. 1988.
  """
  validation.check_range(
    "initial_step", initial_step, low=0.0, low_inclusive=False, allow_none=True
  )
  validation.check_range("safety", safety, low=0.0, high=2.0, low_inclusive=False)
  validation.check_range("decay", decay, low=0.0, high=1.0, low_inclusive=False)
  validation.check_choice("estimate", estimate, ESTIMATES)
  validation.check_int("max_backtracking_steps", max_backtracking_steps, low=1, allow_none=False)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    return ScaleByCurvatureState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=jnp.zeros((), dtype),
      curvature=jnp.zeros((), dtype),
      peak_curvature=jnp.zeros((), dtype),
      function_evals=jnp.zeros((), jnp.int32),
      prev_params=optax.tree.zeros_like(params),
      prev_grad=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    del extra_args
    validation.require_params(params, "scale_by_curvature", "the point of the gradient")
    dtype = state.learning_rate.dtype
    first = state.count == 0
    secant = _secant_curvature(params, state.prev_params, updates, state.prev_grad, dtype, estimate)
    peak = jnp.maximum(state.peak_curvature, secant)
    # Forget only while the last move went downhill; after an uphill move (the new gradient
    # points back along it) undo one forgetting, up to the largest estimate seen.
    moved = optax.tree.sub(params, state.prev_params)
    uphill = numerics.vdot(updates, moved, dtype) > 0
    base = jnp.where(uphill, jnp.minimum(state.curvature / decay, peak), decay * state.curvature)
    curvature = jnp.where(first, 0.0, jnp.maximum(base, secant))
    step = jnp.where(
      curvature > 0,
      numerics.safe_div(safety, curvature),
      jnp.where(
        first, linesearch.initial_step(initial_step, params, updates, dtype), state.learning_rate
      ),
    )
    accepted, evals = jnp.asarray(True), jnp.zeros((), jnp.int32)
    if backtrack_first_step and value is not None and value_fn is not None:
      step, accepted, evals = linesearch.backtrack(
        value_fn,
        params,
        updates,
        value,
        step,
        decrease_factor=0.5,
        sufficient_decrease=0.5,
        max_steps=max_backtracking_steps,
        dtype=dtype,
        active=first,
      )
    new_updates = numerics.scale(jnp.where(accepted, -step, 0.0), updates)
    new_state = ScaleByCurvatureState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      learning_rate=step.astype(dtype),
      curvature=curvature.astype(dtype),
      peak_curvature=jnp.where(first, 0.0, peak).astype(dtype),
      function_evals=state.function_evals + evals,
      prev_params=params,
      prev_grad=jax.tree.map(lambda g, p: g.astype(p.dtype), updates, state.prev_grad),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByBacktrackingState(NamedTuple):
  """State of :func:`scale_by_backtracking`."""

  count: jax.Array  #: int32: updates taken.
  learning_rate: jax.Array  #: the latest accepted step; the next guess is increase_factor times it.
  function_evals: jax.Array  #: int32: value_fn evaluations so far.
  num_backtracking_steps: jax.Array  #: int32: value_fn evaluations at the latest update.


def scale_by_backtracking(
  initial_step: Optional[float] = None,
  *,
  increase_factor: float = 2.0,
  decrease_factor: float = 0.5,
  sufficient_decrease: float = 0.5,
  max_backtracking_steps: int = 40,
) -> optax.GradientTransformationExtraArgs:
  r"""Step size by sufficient-decrease backtracking that can also grow the step.

  At the point ``y`` (``params``) with gradient ``g``, starting from the guess
  ``eta = increase_factor * eta_prev`` (``initial_step`` or a probe at the first update), the step
  is shrunk by ``decrease_factor`` until

  .. math::

    f(y - \eta g) \le f(y) - c\, \eta \|g\|^2, \qquad c = \text{sufficient\_decrease},

  which with ``c = 1/2`` holds for every ``eta <= 1/L`` (the FISTA test of Beck & Teboulle), and
  then emits ``u = -eta g``. Growing the guess at every update lets a too-small first step
  recover geometrically. The search is a bounded ``lax.while_loop``; a trial whose value is inf
  or NaN is rejected. If no trial is accepted within ``max_backtracking_steps`` evaluations the
  update is zero and the shrunk step is kept for the next call.

  It needs the extra arguments ``value`` (``f(y)``) and ``value_fn`` (``f``). Without them
  (e.g. Flax's ``TrainState``) it falls back to the last accepted step and evaluates nothing.

  Args:
    initial_step: the first guess; ``None`` for a probe of relative length ``1e-4`` along ``-g``.
    increase_factor: the guess is the last accepted step times this (``>= 1``).
    decrease_factor: shrink factor on rejection, in ``(0, 1)``.
    sufficient_decrease: the constant ``c`` in ``(0, 1)``.
    max_backtracking_steps: the most ``value_fn`` evaluations per update.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state exposes ``learning_rate`` and the
    cumulative ``function_evals``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> f = lambda x: jnp.sum(jnp.array([1.0, 100.0]) * x ** 2)
    >>> tx = optax.chain(nag_optax.scale_by_backtracking(initial_step=1.0),
    ...                  nag_optax.nesterov(schedule="convex", restart="gradient"))
    >>> x = jnp.array([1.0, 1.0])
    >>> state = tx.init(x)
    >>> for _ in range(5):
    ...   value, grad = jax.value_and_grad(f)(x)
    ...   updates, state = tx.update(grad, state, x, value=value, value_fn=f)
    ...   x = optax.apply_updates(x, updates)
    >>> print(float(optax.tree.get(state, "learning_rate")) <= 1 / 100)
    True

  References:
    Beck & Teboulle, `A fast iterative shrinkage-thresholding algorithm
    <https://doi.org/10.1137/080716542>`_, 2009.

    Nesterov, `Gradient methods for minimizing composite functions
    <https://doi.org/10.1007/s10107-012-0629-5>`_, 2013 (step growth after acceptance).
  """
  validation.check_range(
    "initial_step", initial_step, low=0.0, low_inclusive=False, allow_none=True
  )
  validation.check_range("increase_factor", increase_factor, low=1.0)
  validation.check_range(
    "decrease_factor", decrease_factor, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
  )
  validation.check_range(
    "sufficient_decrease",
    sufficient_decrease,
    low=0.0,
    high=1.0,
    low_inclusive=False,
    high_inclusive=False,
  )
  validation.check_int("max_backtracking_steps", max_backtracking_steps, low=1, allow_none=False)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    izero = jnp.zeros((), jnp.int32)
    return ScaleByBacktrackingState(
      count=izero,
      learning_rate=jnp.zeros((), dtype),
      function_evals=izero,
      num_backtracking_steps=izero,
    )

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    del extra_args
    validation.require_params(params, "scale_by_backtracking", "the point of the gradient")
    dtype = state.learning_rate.dtype
    # No growth at a zero gradient: every trial would be accepted there and the step would
    # double without bound while the iterate stands still.
    grows = numerics.norm(updates, dtype) > 0
    guess = jnp.where(
      state.count > 0,
      state.learning_rate * jnp.where(grows, increase_factor, 1.0),
      linesearch.initial_step(initial_step, params, updates, dtype),
    )
    if value is None or value_fn is None:
      step = jnp.where(state.count > 0, state.learning_rate, guess)
      accepted, evals = jnp.asarray(True), jnp.zeros((), jnp.int32)
    else:
      step, accepted, evals = linesearch.backtrack(
        value_fn,
        params,
        updates,
        value,
        guess,
        decrease_factor=decrease_factor,
        sufficient_decrease=sufficient_decrease,
        max_steps=max_backtracking_steps,
        dtype=dtype,
      )
    new_updates = numerics.scale(jnp.where(accepted, -step, 0.0), updates)
    new_state = ScaleByBacktrackingState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      learning_rate=step.astype(dtype),
      function_evals=state.function_evals + evals,
      num_backtracking_steps=evals,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
