"""``auto_nag``'s float64 method: spectral steps while the loss looks convex, then Nesterov's.

The spectral (Barzilai-Borwein) steps sweep the spectrum of a convex loss faster than any
fixed-parameter momentum method, but on a loss that curves down they advance slowly where
momentum carries the iterates along a valley; and in low precision their long steps amplify the
rounding of the iterates. :func:`spectral_then_nesterov` switches from the first to the
Nesterov method at the first sign of negative curvature, sharing the buffers; :func:`by_precision`
picks a whole optimizer from the params' dtype.
"""

import typing
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import momentum
from nag_optax._src import numerics
from nag_optax._src import spectral as spectral_lib
from nag_optax._src import step_size
from nag_optax._src import validation


class CurvatureScalars(NamedTuple):
  """:class:`ScaleByCurvatureState` without its two buffers, which the spectral state holds (its
  step is named ``step``, so that ``optax.tree.get(state, "learning_rate")`` finds one value)."""

  count: jax.Array  #: int32: updates of the Nesterov phase.
  step: jax.Array  #: the curvature step of the latest update.
  curvature: jax.Array  #: the running curvature estimate.
  peak_curvature: jax.Array  #: the largest two-point estimate seen.
  evals: jax.Array  #: int32: value_fn evaluations of the first step's backtracking.


class SpectralThenNesterovState(NamedTuple):
  """State of :func:`spectral_then_nesterov` (``auto_nag()``'s method with float64 params)."""

  switched: jax.Array  #: bool: an accepted pair curved down (<s, y> < 0); Nesterov runs.
  #: The spectral state; its ``ref_params`` / ``ref_grad`` are also the Nesterov phase's
  #: previous point and gradient, and its ``learning_rate`` is the step in use in either phase.
  spectral: spectral_lib.ScaleBySpectralState
  curvature: CurvatureScalars  #: :func:`scale_by_curvature`'s scalars (Nesterov phase).
  nesterov: momentum.NesterovState  #: :func:`nesterov`'s state (its buffer is the third one).


def _scalars(state: step_size.ScaleByCurvatureState) -> CurvatureScalars:
  return CurvatureScalars(
    count=state.count,
    step=state.learning_rate,
    curvature=state.curvature,
    peak_curvature=state.peak_curvature,
    evals=state.function_evals,
  )


_State = typing.TypeVar("_State")


def _checked(name: str, state: Any, expected: type[_State], factory: str) -> _State:
  """``state``, checked to be of the type that ``factory``'s transformations keep."""
  if not isinstance(state, expected):
    raise TypeError(
      f"spectral_then_nesterov: {name} must be a nag_optax.{factory}(...), whose state is a "
      f"{expected.__name__}; got a state of type {type(state).__name__}."
    )
  return state


def spectral_then_nesterov(
  spectral: optax.GradientTransformation,
  curvature: optax.GradientTransformation,
  nesterov: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  r"""Spectral steps until the loss curves down, then the Nesterov method from that point on.

  ``spectral`` (a :func:`scale_by_spectral`) runs while every accepted pair
  ``s = x_t - x_r``, ``y = g_t - g_r`` shows positive curvature. At the first accepted pair with
  ``<s, y> < 0`` (a non-convex region) the update switches for good to
  ``chain(curvature, nesterov)`` (a :func:`scale_by_curvature` and a :func:`nesterov`), started
  afresh at that point. The curvature step's previous point and gradient are the spectral
  method's accepted point and gradient, so the state holds three parameter-sized buffers (those
  two and the momentum buffer), not five.

  Non-finite inputs: the spectral phase backs out of a non-finite trial point (wrap in
  :func:`stop_when` with ``pass_nonfinite=True``); the Nesterov phase makes its update NaN where
  the gradient or ``value`` is not finite, so the guard skips it as it skips the Nesterov
  method's.

  Args:
    spectral: a :func:`scale_by_spectral`.
    curvature: a :func:`scale_by_curvature`.
    nesterov: a :func:`nesterov`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SpectralThenNesterovState`; ``update`` needs ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.spectral_then_nesterov(
    ...     nag_optax.scale_by_spectral(),
    ...     nag_optax.scale_by_curvature(decay=0.9, estimate="cocoercive"),
    ...     nag_optax.nesterov(schedule="adaptive", restart="gradient"))
    >>> f = lambda x: jnp.sum(jnp.array([1.0, 10.0]) * (x - 1.0) ** 2)  # convex: no switch
    >>> step = jax.jit(lambda x, state: tx.update(jax.grad(f)(x), state, x))
    >>> x = jnp.zeros(2)
    >>> state = tx.init(x)
    >>> for _ in range(30):
    ...   updates, state = step(x, state)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 4), bool(state.switched))
    [1. 1.] False
  """
  for name, value in (("spectral", spectral), ("curvature", curvature), ("nesterov", nesterov)):
    validation.check_transformation(name, value, example="nag_optax.scale_by_spectral()")

  def init_fn(params):
    params = validation.as_arrays(params)
    return SpectralThenNesterovState(
      switched=jnp.zeros((), bool),
      spectral=_checked(
        "spectral",
        spectral.init(params),
        spectral_lib.ScaleBySpectralState,
        "scale_by_spectral",
      ),
      curvature=_scalars(
        _checked(
          "curvature",
          curvature.init(params),
          step_size.ScaleByCurvatureState,
          "scale_by_curvature",
        )
      ),
      nesterov=_checked("nesterov", nesterov.init(params), momentum.NesterovState, "nesterov"),
    )

  def update_fn(updates, state, params=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    validation.require_params(params, "spectral_then_nesterov", "the point of the gradient")
    cast = lambda tree: jax.tree.map(lambda u, g: u.astype(g.dtype), tree, updates)

    def nesterov_phase(state: SpectralThenNesterovState):
      shared = state.spectral
      curvature_state = step_size.ScaleByCurvatureState(
        count=state.curvature.count,
        learning_rate=state.curvature.step,
        curvature=state.curvature.curvature,
        peak_curvature=state.curvature.peak_curvature,
        function_evals=state.curvature.evals,
        prev_params=shared.ref_params,
        prev_grad=shared.ref_grad,
      )
      # chain(curvature, nesterov), written out so that the states keep their types.
      steps, curvature_state = curvature.update(updates, curvature_state, params, **extra_args)
      curvature_state = typing.cast(step_size.ScaleByCurvatureState, curvature_state)
      new_updates, nesterov_state = nesterov.update(steps, state.nesterov, params, **extra_args)
      evals = curvature_state.function_evals - state.curvature.evals
      shared = shared._replace(
        learning_rate=curvature_state.learning_rate.astype(shared.learning_rate.dtype),
        function_evals=shared.function_evals + evals,
        ref_params=curvature_state.prev_params,
        ref_grad=curvature_state.prev_grad,
      )
      # A non-finite gradient makes the update non-finite by itself; a non-finite value (which
      # the update does not read) is made to, so that stop_when's guard skips the step.
      value = extra_args.get("value")
      if value is not None:
        finite = jnp.all(jnp.isfinite(jnp.asarray(value)))
        new_updates = jax.tree.map(
          lambda u: jnp.where(finite, u, jnp.full_like(u, jnp.nan)), new_updates
        )
      return cast(new_updates), SpectralThenNesterovState(
        switched=jnp.ones((), bool),
        spectral=shared,
        curvature=_scalars(curvature_state),
        nesterov=typing.cast(momentum.NesterovState, nesterov_state),
      )

    def spectral_phase(state: SpectralThenNesterovState):
      new_updates, spectral_state = spectral.update(updates, state.spectral, params, **extra_args)
      spectral_state = typing.cast(spectral_lib.ScaleBySpectralState, spectral_state)
      accepted = (spectral_state.rejections == state.spectral.rejections) & (
        state.spectral.count > 0
      )
      curves_down = accepted & (spectral_state.pair_curvature < 0)
      stay = (cast(new_updates), state._replace(spectral=spectral_state))
      # At the switch the Nesterov phase starts from this (accepted) point, its state still as
      # initialised; the spectral state's counters carry on.
      switch = lambda _: nesterov_phase(state._replace(spectral=spectral_state))
      return jax.lax.cond(curves_down, switch, lambda _: stay, None)

    return jax.lax.cond(state.switched, nesterov_phase, spectral_phase, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def by_precision(
  float64: optax.GradientTransformationExtraArgs, lower: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformationExtraArgs:
  """``float64`` where the params hold float64 leaves, else ``lower``, decided from the params'
  dtypes at init and at every update alike (each a whole optimizer, stopping signal included)."""

  def pick(params):
    high = numerics.scalar_dtype(validation.as_arrays(params)) == jnp.float64
    return float64 if high else lower

  def init_fn(params):
    return pick(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    return pick(updates if params is None else params).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
