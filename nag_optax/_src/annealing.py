"""Bounded annealing on the training loss: a plateau schedule that starts once the loss falls.

The minibatch rate of :func:`scale_by_distance` never decreases; an annealing on top of it
(``optax.contrib.reduce_on_plateau``, bounded by its ``min_scale``) lets a run settle the way a
decayed schedule does. :func:`anneal_after_progress` holds that annealing until the loss has
started to fall, and :func:`feed_plateau` is how a rate transformation feeds it.
"""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation


def check_plateau(plateau: Any, *, allow_none: bool = True) -> None:
  """Raise TypeError unless ``plateau`` is an optax transformation (or None where allowed)."""
  validation.check_transformation(
    "plateau",
    plateau,
    example="optax.contrib.reduce_on_plateau()",
    allow_none=allow_none,
  )


def feed_plateau(plateau, plateau_state, scale, value, finite, dtype):
  """``(scale, state)`` of the annealing ``plateau`` after feeding it the loss ``value``.

  The plateau transformation scales a unit input; its output is the new factor on the step.
  Unchanged without a plateau or a ``value``; a non-finite step (``finite`` False) or loss never
  reaches it.
  """
  if plateau is None or value is None:
    return scale, plateau_state
  unit, new_state = plateau.update(jnp.ones((), dtype), plateau_state, value=value)
  feed = finite & jnp.isfinite(jnp.asarray(value))
  return (
    jnp.where(feed, jnp.asarray(unit, dtype), scale),
    optax.tree.where(feed, new_state, plateau_state),
  )


class AnnealAfterProgressState(NamedTuple):
  """State of :func:`anneal_after_progress`."""

  count: jax.Array  #: int32: losses received.
  progressed: jax.Array  #: bool: a window's mean loss has fallen ``drop`` below ``initial``.
  #: ``(window_sum, initial)``: the sum of the losses of the current window, and the mean loss of
  #: the first window (inf until it is complete); read them by name.
  window: jax.Array
  #: The state of the wrapped annealing; a state of scalars (``reduce_on_plateau``'s) packed into
  #: one vector per dtype (Flax NNX pays per leaf on every jitted call).
  inner: Any

  @property
  def window_sum(self) -> jax.Array:
    """The sum of the losses of the current window."""
    return self.window[..., 0]

  @property
  def initial(self) -> jax.Array:
    """The mean loss of the first window (inf until it is complete)."""
    return self.window[..., 1]


def anneal_after_progress(
  plateau: optax.GradientTransformation, drop: float = 0.1, window: int = 25
) -> optax.GradientTransformationExtraArgs:
  r"""Hold an annealing on the loss (``reduce_on_plateau``) until the loss has started to fall.

  An annealing that halves the step when the loss stops setting new lows reads a flat loss as
  convergence, but a run that has not started learning is flat too: recurrent networks, for one,
  often sit at the chance-level loss for hundreds of steps before their loss falls, and an
  annealing fed that stretch cuts the step to its floor before training begins. This wrapper
  passes the updates through unchanged (the unit scale) and does not feed
  ``plateau`` until the mean loss of a window of ``window`` updates is at least ``drop`` (as a
  fraction of its magnitude) below the mean of the first window,

  .. math::

    ar f_j \le ar f_0 - \mathrm{drop}\, |ar f_0|,

  and from then on it is ``plateau``, fed every loss. A loss that never falls that far (a run
  started at its minimum) is never annealed.

  Args:
    plateau: the annealing, an optax transformation reading the ``value`` extra argument
      (``optax.contrib.reduce_on_plateau``).
    drop: the relative fall of the windowed loss that counts as progress, in ``(0, 1)``.
    window: updates per window, at least 1.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` for the ``plateau`` argument of
    :func:`scale_by_distance`.

  Examples:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.anneal_after_progress(
    ...     optax.contrib.reduce_on_plateau(patience=1, accumulation_size=1), window=1)
    >>> state = tx.init(jnp.ones(()))
    >>> for loss in [2.0, 2.0, 2.0, 1.0, 1.0]:
    ...   scale, state = tx.update(jnp.ones(()), state, value=loss)
    >>> print(round(float(scale), 3))  # held while flat at 2.0; fed from 1.0 on, cut once
    0.1
  """
  check_plateau(plateau, allow_none=False)
  validation.check_range("drop", drop, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
  validation.check_int("window", window, low=1, allow_none=False)
  inner = optax.with_extra_args_support(plateau)

  def pack(inner_state):
    return numerics.pack_scalars(inner_state) if numerics.all_scalars(inner_state) else inner_state

  def unpack(inner_state, params):
    # The packed state's layout, from the annealing's own init (for the scale of
    # scale_by_distance, a unit scalar, as it is initialised with).
    like = jax.eval_shape(plateau.init, params)
    return numerics.unpack_scalars(inner_state, like) if numerics.all_scalars(like) else inner_state

  def init_fn(params):
    params = validation.as_arrays(params)
    return AnnealAfterProgressState(
      count=jnp.zeros((), jnp.int32),
      progressed=jnp.zeros((), bool),
      window=jnp.array([0.0, jnp.inf], jnp.float32),
      inner=pack(plateau.init(params)),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    if value is None:
      raise ValueError(
        "anneal_after_progress needs the loss as the value extra argument: "
        "update(updates, state, params, value=loss)."
      )
    value = jnp.asarray(value).astype(jnp.float32)
    count = jnp.asarray(optax.safe_increment(state.count))
    window_sum = state.window_sum + value
    closes = count % window == 0
    mean = window_sum / window
    first = count == window
    initial = jnp.where(closes & first, mean, state.initial)
    progressed = state.progressed | (
      closes & ~first & (mean <= state.initial - drop * jnp.abs(state.initial))
    )
    inner_updates, inner_state = inner.update(
      updates,
      unpack(state.inner, updates if params is None else params),
      params,
      value=value,
      **extra_args,
    )
    new_updates = optax.tree.where(progressed, inner_updates, updates)
    new_state = AnnealAfterProgressState(
      count=count,
      progressed=progressed,
      window=jnp.stack([jnp.where(closes, 0.0, window_sum), initial]),
      inner=optax.tree.where(progressed, pack(inner_state), state.inner),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
