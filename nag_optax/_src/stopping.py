"""The stopping signal: ``stop_when`` wraps any transformation with convergence tests and a
non-finite guard; ``should_stop`` / ``stop_reason`` read it from any state tree."""

import difflib
import enum
import importlib.util
import os
import sys
import warnings
from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax._src import numerics
from nag_optax._src import validation

# validation_min_delta is relative to the best validation loss, but never to less than this
# fraction of the first one: a loss that has fallen a hundredfold from where it started belongs to
# a model that already fits the validation set, and its tiny relative improvements are no progress.
SATURATED_FRACTION = 0.01

# The default relative gradient tolerance of the full-batch solvers (``auto_nag`` and
# ``minimize``): stop at ``||g|| <= DEFAULT_RTOL ||g_0||``.
DEFAULT_RTOL = 1e-6


class StopReason(enum.IntEnum):
  """Why the stopping signal fired. Stored as an int32 code in ``StopWhenState.reason``."""

  NOT_STOPPED = 0
  GTOL = 1
  RTOL = 2
  FTOL = 3
  XTOL = 4
  MAX_STEPS = 5
  PATIENCE = 6
  MIN_LEARNING_RATE = 7
  NONFINITE = 8
  VALIDATION_PATIENCE = 9

  def __str__(self) -> str:
    return self.name

  def __format__(self, format_spec: str) -> str:
    # The name in f-strings and str.format ("{}" or "{:>10}"), the code with a numeric spec.
    if format_spec and format_spec[-1] in "bcdoxXn":
      return format(int(self), format_spec)
    return format(self.name, format_spec)

  @property
  def description(self) -> str:
    """What the reason means, in words (e.g. ``"gradient norm <= gtol"`` for ``GTOL``)."""
    return _DESCRIPTIONS[self]

  @property
  def converged(self) -> bool:
    """Whether the reason certifies a (near-)stationary point (GTOL, RTOL, FTOL or XTOL)."""
    return self in (StopReason.GTOL, StopReason.RTOL, StopReason.FTOL, StopReason.XTOL)


_DESCRIPTIONS = {
  StopReason.NOT_STOPPED: "not stopped",
  StopReason.GTOL: "gradient norm <= gtol",
  StopReason.RTOL: "gradient norm <= rtol * initial gradient norm",
  StopReason.FTOL: "relative change of the loss <= ftol",
  StopReason.XTOL: "update norm <= xtol",
  StopReason.MAX_STEPS: "reached max_steps",
  StopReason.PATIENCE: "loss not improved for `patience` steps",
  StopReason.MIN_LEARNING_RATE: "adapted learning rate below min_learning_rate",
  StopReason.NONFINITE: "max_nonfinite consecutive non-finite gradients, losses or updates",
  StopReason.VALIDATION_PATIENCE: "validation loss not improved for `validation_patience` steps",
}


class StopWhenState(NamedTuple):
  """State of :func:`stop_when`."""

  inner_state: Any  #: state of the wrapped transformation (frozen once stopped).
  stop: jax.Array  #: bool: the signal; once True, updates are zero.
  reason: jax.Array  #: int32 code of StopReason.
  count: jax.Array  #: int32: updates applied (skipped and zero updates after the signal excluded).
  #: The criteria's float statistics, packed (one leaf, not six: Flax NNX pays per leaf on every
  #: jitted call); read them by name: ``grad_norm``, ``initial_grad_norm``, ``update_norm``,
  #: ``last_value``, ``best_value``, ``best_validation``.
  values: jax.Array
  #: The criteria's int32 counters, packed; read them by name: ``steps_since_improvement``,
  #: ``nonfinite_count``, ``total_nonfinite``, ``steps_since_validation_improvement``,
  #: ``best_validation_step``.
  counters: jax.Array

  @classmethod
  def of(cls, inner_state, stop, reason, count, **named) -> "StopWhenState":
    """The state from its statistics by name (each a scalar, or batched alike)."""
    return cls(
      inner_state=inner_state,
      stop=stop,
      reason=reason,
      count=count,
      values=jnp.stack([jnp.asarray(named[n]) for n in _VALUES], axis=-1),
      counters=jnp.stack([jnp.asarray(named[n], jnp.int32) for n in _COUNTERS], axis=-1),
    )

  @property
  def grad_norm(self) -> jax.Array:
    """||g|| at the latest call."""
    return self.values[..., 0]

  @property
  def initial_grad_norm(self) -> jax.Array:
    """The first finite gradient norm ||g_0||, for rtol."""
    return self.values[..., 1]

  @property
  def update_norm(self) -> jax.Array:
    """||update|| of the latest applied update (inf where neither ``check_updates`` nor ``xtol``
    asks for it)."""
    return self.values[..., 2]

  @property
  def last_value(self) -> jax.Array:
    """The loss at the latest finite step (inf before the first)."""
    return self.values[..., 3]

  @property
  def best_value(self) -> jax.Array:
    """The lowest loss seen, for patience."""
    return self.values[..., 4]

  @property
  def best_validation(self) -> jax.Array:
    """The best ``validation_loss`` seen: the lowest that improved on the one before by at least
    ``validation_min_delta`` (inf before the first)."""
    return self.values[..., 5]

  @property
  def first_validation(self) -> jax.Array:
    """The first finite ``validation_loss`` (inf before it)."""
    return self.values[..., 6]

  @property
  def steps_since_improvement(self) -> jax.Array:
    """Calls since best_value last improved."""
    return self.counters[..., 0]

  @property
  def nonfinite_count(self) -> jax.Array:
    """Consecutive skipped non-finite steps."""
    return self.counters[..., 1]

  @property
  def total_nonfinite(self) -> jax.Array:
    """Skipped non-finite steps in all."""
    return self.counters[..., 2]

  @property
  def steps_since_validation_improvement(self) -> jax.Array:
    """Calls since best_validation improved."""
    return self.counters[..., 3]

  @property
  def best_validation_step(self) -> jax.Array:
    """``count`` when best_validation was set."""
    return self.counters[..., 4]


_VALUES = (
  "grad_norm",
  "initial_grad_norm",
  "update_norm",
  "last_value",
  "best_value",
  "best_validation",
  "first_validation",
)
_COUNTERS = (
  "steps_since_improvement",
  "nonfinite_count",
  "total_nonfinite",
  "steps_since_validation_improvement",
  "best_validation_step",
)


def _learning_rates(inner_state):
  found = optax.tree.get_all_with_path(
    inner_state,
    "learning_rate",
    filtering=lambda _, v: isinstance(v, (jax.Array, np.ndarray, float)),
  )
  return [v for _, v in found]


def stop_when(
  inner: optax.GradientTransformation,
  *,
  gtol: Optional[float] = None,
  rtol: Optional[float] = None,
  ftol: Optional[float] = None,
  xtol: Optional[float] = None,
  max_steps: Optional[int] = None,
  patience: Optional[int] = None,
  min_learning_rate: Optional[float] = None,
  validation_patience: Optional[int] = None,
  validation_min_delta: float = 0.0,
  validation_patience_ratio: float = 0.0,
  max_nonfinite: int = 5,
  pass_nonfinite: bool = False,
  check_updates: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Wrap a transformation with a stopping signal and a non-finite guard.

  At each call, with ``g`` the incoming updates (the gradient at ``params``) and ``f`` the
  ``value`` extra argument when given, the signal fires when any enabled criterion holds:

  * ``||g|| <= gtol`` (``GTOL``), or ``||g|| <= rtol ||g_0||`` (``RTOL``);
  * ``|f_k - f_{k-1}| <= ftol max(|f_k|, |f_{k-1}|, 1)`` (``FTOL``; needs ``value``);
  * ``max_steps`` updates have been applied (``MAX_STEPS``);
  * ``f`` has not gone below its best for ``patience`` calls (``PATIENCE``; needs ``value``);
  * the inner state's ``learning_rate`` ``< min_learning_rate`` (``MIN_LEARNING_RATE``);
  * the ``validation_loss`` extra argument ``v`` has set no new best for
    ``max(validation_patience, validation_patience_ratio * t_best)`` calls, ``t_best`` the update
    count when the best was set (``VALIDATION_PATIENCE``): the early stopping of deep learning. A
    new best is a validation loss below the best by at least ``validation_min_delta`` of it,
    ``v < v_best - min_delta max(|v_best|, 0.01 |v_first|)`` (``v_first`` the first validation
    loss), so that a loss creeping down by tiny amounts (a model that already classifies
    everything right) does not keep the run going; and the patience
    grows with the run, so the stop comes at most ``1 + validation_patience_ratio`` times the
    step of the best once that term dominates. Pass the latest measured validation loss at every
    update (it may stay the same between evaluations: calls without a new best count towards
    the patience), so the patience is in updates, whatever the evaluation interval; pass the
    loss of the params you would keep (with an iterate average, of the average);
  * after applying it, the inner update's norm ``<= xtol`` (``XTOL``).

  The tests on ``g`` and ``f`` are made before the inner update, so the call that finds a
  converged point returns zero and ``params`` is that point. Once the signal has fired the updates
  are exactly zero and no state changes, so a fixed-length ``lax.scan`` loop is safe.

  A step whose gradient, ``value`` or inner update is not finite is skipped: zero update, state
  kept. After ``max_nonfinite`` consecutive skips the signal fires with ``NONFINITE``. With
  ``pass_nonfinite`` a non-finite gradient or ``value`` is passed to ``inner`` instead, and its
  update is applied when finite: for a transformation that backs out of a non-finite point
  (:func:`scale_by_spectral` returns to its last accepted point); ``max_nonfinite`` consecutive
  non-finite inputs still stop the run. NaN never
  satisfies a convergence test. Norms are global over the pytree (correct for sharded arrays).

  Cost: the gradient norm is one reduction over the gradient. Testing the inner update too
  (``check_updates``, and ``xtol``) takes another over the update, which then has to be written
  out and read back before the params can take it: about three more parameter-sized passes per
  step. With ``check_updates=False`` the decision to apply is made from the inputs alone, before
  the inner update, and the selection fuses into the update's own pass; for a transformation whose
  update is finite whenever its inputs and state are (those of :func:`auto_nadamw` and
  :func:`auto_nag_sgd`, whose directions are bounded).

  Args:
    inner: the transformation (or chain) to wrap.
    gtol: absolute gradient-norm tolerance.
    rtol: gradient-norm tolerance relative to the first gradient's norm, in ``[0, 1)``.
    ftol: relative loss-change tolerance.
    xtol: absolute update-norm tolerance.
    max_steps: the most updates to apply.
    patience: calls without a new lowest loss before stopping.
    min_learning_rate: stop when the ``learning_rate`` in the inner state falls below this floor.
    validation_patience: updates without a new best ``validation_loss`` before stopping (the
      least the stop waits); ``None`` for no validation stop.
    validation_min_delta: the relative improvement a validation loss needs to count as a new
      best, in ``[0, 1)``.
    validation_patience_ratio: the stop also waits this fraction of the update count at which
      the best was set (``>= 0``).
    max_nonfinite: consecutive non-finite steps tolerated before stopping (>= 1).
    pass_nonfinite: pass non-finite inputs to ``inner`` and apply its finite update.
    check_updates: also skip a step whose inner update is not finite (see Cost above).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`StopWhenState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
    >>> tx = nag_optax.stop_when(nag_optax.nag(0.1), gtol=1e-4)
    >>> x = jnp.zeros(2)
    >>> state = tx.init(x)
    >>> while not nag_optax.should_stop(state):
    ...   updates, state = tx.update(jax.grad(f)(x), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(nag_optax.stop_reason(state).name, int(state.count))
    GTOL 57

  References:
    Nocedal & Wright, Numerical Optimization, 2nd ed., 2006, section 2.2 (stopping tests).
  """
  validation.check_range("gtol", gtol, low=0.0, allow_none=True)
  validation.check_range("rtol", rtol, low=0.0, high=1.0, high_inclusive=False, allow_none=True)
  validation.check_range("ftol", ftol, low=0.0, allow_none=True)
  validation.check_range("xtol", xtol, low=0.0, allow_none=True)
  validation.check_range("min_learning_rate", min_learning_rate, low=0.0, allow_none=True)
  validation.check_int("max_steps", max_steps, low=0)
  validation.check_int("patience", patience, low=1)
  validation.check_int("validation_patience", validation_patience, low=1)
  validation.check_range(
    "validation_min_delta", validation_min_delta, low=0.0, high=1.0, high_inclusive=False
  )
  validation.check_range("validation_patience_ratio", validation_patience_ratio, low=0.0)
  validation.check_int("max_nonfinite", max_nonfinite, low=1, allow_none=False)
  for name, flag in (("pass_nonfinite", pass_nonfinite), ("check_updates", check_updates)):
    if not isinstance(flag, bool):
      raise TypeError(f"{name} must be a bool, got {flag!r}.")
  if pass_nonfinite and not check_updates:
    raise ValueError(
      "pass_nonfinite applies the inner update only when finite: it needs check_updates."
    )
  validation.check_transformation("inner", inner, example="nag_optax.nag(0.1)")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    inner_state = inner.init(params)
    if min_learning_rate is not None and not _learning_rates(inner_state):
      raise ValueError(
        "min_learning_rate needs an inner transformation whose state has a "
        "'learning_rate' field (e.g. scale_by_curvature, scale_by_hypergradient, "
        "or optax.inject_hyperparams)."
      )
    dtype = numerics.scalar_dtype(params)
    inf = jnp.full((), jnp.inf, dtype)
    izero = jnp.zeros((), jnp.int32)
    return StopWhenState.of(
      inner_state=inner_state,
      stop=jnp.zeros((), bool),
      reason=jnp.zeros((), jnp.int32),
      count=izero,
      grad_norm=inf,
      initial_grad_norm=inf,
      update_norm=inf,
      last_value=inf,
      best_value=inf,
      steps_since_improvement=izero,
      nonfinite_count=izero,
      total_nonfinite=izero,
      best_validation=inf,
      first_validation=inf,
      steps_since_validation_improvement=izero,
      best_validation_step=izero,
    )

  def _warn_if_unfed(value, validation_loss, extra_args):
    # Decided at trace time (whether the extra argument was passed at all), so under jit it warns
    # once per compilation; Python's default filter shows each warning once per place.
    messages = []
    training = [f"{n}={v!r}" for n, v in (("ftol", ftol), ("patience", patience)) if v is not None]
    if value is None and training:
      messages.append(
        f"{' and '.join(training)} never {'fires' if len(training) == 1 else 'fire'} without the "
        "`value` extra argument (the training loss), and this update got none: pass it, "
        "tx.update(grads, state, params, value=loss) (Flax NNX: optimizer.update(model, grads, "
        "value=loss)), or drop the criterion."
      )
    if validation_loss is None and validation_patience is not None:
      messages.append(
        f"validation_patience={validation_patience!r} never fires without the `validation_loss` "
        "extra argument, and this update got none: pass the latest validation loss at every "
        "update, tx.update(grads, state, params, validation_loss=val_loss) (Flax NNX: "
        "optimizer.update(model, grads, validation_loss=val_loss)), or drop the criterion."
      )
    for name in extra_args:
      close = difflib.get_close_matches(name, KNOWN_EXTRA_ARGS, n=1, cutoff=0.6)
      if name not in KNOWN_EXTRA_ARGS and close:
        messages.append(
          f"update got an extra argument {name}=, which no nag_optax transformation reads: "
          f"did you mean {close[0]}=?"
        )
    for message in messages:
      _warn_at_caller(f"stop_when: {message}")

  def update_fn(updates, state, params=None, *, value=None, validation_loss=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    for arg_name, arg in (("value", value), ("validation_loss", validation_loss)):
      if arg is not None and jnp.ndim(arg) != 0:
        raise ValueError(
          f"{arg_name} must be a scalar loss (reduce it, e.g. with jnp.mean), got shape "
          f"{jnp.shape(arg)}."
        )
    _warn_if_unfed(value, validation_loss, extra_args)
    dtype = state.grad_norm.dtype
    grad_norm = numerics.norm(updates, dtype)
    has_value = value is not None
    f = jnp.asarray(value).astype(dtype) if has_value else jnp.zeros((), dtype)
    inputs_finite = jnp.isfinite(grad_norm)
    if has_value:
      inputs_finite &= jnp.isfinite(f)
    first = state.count == 0
    initial_grad_norm = jnp.where(
      jnp.isinf(state.initial_grad_norm) & inputs_finite, grad_norm, state.initial_grad_norm
    )

    # Tests on the current point (before the step). NaN fails every comparison.
    reason = jnp.full((), StopReason.NOT_STOPPED, jnp.int32)

    def fire(reason, condition, code):
      return jnp.where((reason == StopReason.NOT_STOPPED) & condition, jnp.int32(code), reason)

    if gtol is not None:
      reason = fire(reason, inputs_finite & (grad_norm <= gtol), StopReason.GTOL)
    if rtol is not None:
      reason = fire(
        reason, inputs_finite & (grad_norm <= rtol * initial_grad_norm), StopReason.RTOL
      )
    if ftol is not None and has_value:
      scale = jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(state.last_value)), 1.0)
      change_small = jnp.abs(f - state.last_value) <= ftol * scale
      reason = fire(reason, inputs_finite & ~first & change_small, StopReason.FTOL)
    improved = inputs_finite & (f < state.best_value) if has_value else jnp.asarray(False)
    steps_since_improvement = jnp.where(improved, 0, state.steps_since_improvement + 1)
    if patience is not None and has_value:
      reason = fire(reason, steps_since_improvement >= patience, StopReason.PATIENCE)
    if validation_loss is not None:
      val = jnp.asarray(validation_loss).astype(dtype)
      best = state.best_validation
      first_val = jnp.where(jnp.isfinite(state.first_validation), state.first_validation, val)
      scale = jnp.maximum(jnp.abs(best), SATURATED_FRACTION * jnp.abs(first_val))
      margin = jnp.where(jnp.isfinite(best), validation_min_delta * scale, 0.0)
      val_improved = jnp.isfinite(val) & (val < best - margin)
      best_validation = jnp.where(val_improved, val, best)
      best_step = jnp.where(val_improved, state.count, state.best_validation_step)
      steps_since_val = jnp.where(val_improved, 0, state.steps_since_validation_improvement + 1)
      if validation_patience is not None:
        wait = jnp.maximum(
          jnp.asarray(validation_patience, dtype),
          validation_patience_ratio * best_step.astype(dtype),
        )
        reason = fire(
          reason,
          steps_since_val.astype(dtype) >= wait,
          StopReason.VALIDATION_PATIENCE,
        )
    else:
      best_validation = state.best_validation
      first_val = state.first_validation
      best_step = state.best_validation_step
      steps_since_val = state.steps_since_validation_improvement
    if max_steps is not None:
      reason = fire(reason, state.count >= max_steps, StopReason.MAX_STEPS)
    if min_learning_rate is not None:
      lr = jnp.min(
        jnp.concatenate(
          [jnp.ravel(jnp.asarray(v, dtype)) for v in _learning_rates(state.inner_state)]
        )
      )
      reason = fire(reason, lr < min_learning_rate, StopReason.MIN_LEARNING_RATE)
    stop_now = reason != StopReason.NOT_STOPPED

    if validation_loss is not None:
      extra_args["validation_loss"] = validation_loss
    inner_updates, inner_state = inner.update(
      updates, state.inner_state, params, value=value, **extra_args
    )
    inner_updates = jax.tree.map(lambda u, g: u.astype(g.dtype), inner_updates, updates)
    if check_updates or xtol is not None:
      update_norm = numerics.norm(inner_updates, dtype)
    else:
      update_norm = state.update_norm
    if check_updates:
      finite = inputs_finite & jnp.isfinite(update_norm)
      apply = ~state.stop & ~stop_now & (jnp.isfinite(update_norm) if pass_nonfinite else finite)
    else:
      finite = inputs_finite
      apply = ~state.stop & ~stop_now & finite

    nonfinite_count = jnp.where(finite, 0, state.nonfinite_count + 1)
    reason = fire(reason, ~finite & (nonfinite_count >= max_nonfinite), StopReason.NONFINITE)
    if xtol is not None:
      reason = fire(reason, apply & (update_norm <= xtol), StopReason.XTOL)
    stop = reason != StopReason.NOT_STOPPED

    new_updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), inner_updates)
    new_inner_state = optax.tree.where(apply, inner_state, state.inner_state)
    keep = lambda new, old: jnp.where(state.stop, old, new)
    take_finite = lambda new, old: jnp.where(state.stop | ~inputs_finite, old, new)
    new_state = StopWhenState.of(
      inner_state=new_inner_state,
      stop=state.stop | stop,
      reason=keep(reason, state.reason),
      count=state.count + apply.astype(jnp.int32),
      grad_norm=keep(grad_norm, state.grad_norm),
      initial_grad_norm=keep(initial_grad_norm, state.initial_grad_norm),
      update_norm=jnp.where(apply, update_norm, state.update_norm),
      last_value=take_finite(f, state.last_value) if has_value else state.last_value,
      best_value=jnp.where(~state.stop & improved, f, state.best_value),
      steps_since_improvement=keep(steps_since_improvement, state.steps_since_improvement),
      nonfinite_count=keep(nonfinite_count, state.nonfinite_count),
      total_nonfinite=keep(
        state.total_nonfinite + (~finite).astype(jnp.int32), state.total_nonfinite
      ),
      best_validation=keep(best_validation, state.best_validation),
      first_validation=keep(
        jnp.where(jnp.isfinite(first_val), first_val, state.first_validation),
        state.first_validation,
      ),
      steps_since_validation_improvement=keep(
        steps_since_val, state.steps_since_validation_improvement
      ),
      best_validation_step=keep(best_step, state.best_validation_step),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The extra arguments nag_optax's transformations read; a name close to one of these is reported.
KNOWN_EXTRA_ARGS = ("value", "value_fn", "grad", "validation_loss")


# Frames inside these directories are not the user's call site: nag_optax, Optax, JAX, Flax (NNX's
# Optimizer.update and jit) and Python's standard library.
def _package_dir(name: str) -> Optional[str]:
  spec = importlib.util.find_spec(name)
  locations = spec.submodule_search_locations if spec is not None else None
  return os.path.abspath(list(locations)[0]) + os.sep if locations else None


_LIBRARY_DIRS = tuple(
  d
  for d in [_package_dir(n) for n in ("nag_optax", "optax", "jax", "jaxlib", "flax")]
  + [os.path.dirname(os.path.abspath(os.__file__)) + os.sep]
  if d is not None
)


def _is_library_frame(filename: str) -> bool:
  return os.path.abspath(filename).startswith(_LIBRARY_DIRS) or filename.startswith("<frozen")


def _warn_at_caller(message: str) -> None:
  """Warn at the first frame outside nag_optax, Optax, JAX and Flax: the user's line."""
  frame, level = sys._getframe(1), 2  # stacklevel 2 is this function's caller
  while frame is not None and _is_library_frame(frame.f_code.co_filename):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, stacklevel=level if frame is not None else 2)


def stop_states(state) -> list:
  """Every ``stop_when`` state in ``state`` (outermost first); a ValueError if there is none."""
  found = numerics.find_states(state, StopWhenState)
  if not found:
    raise ValueError(
      "state contains no stop_when state; wrap the optimizer with "
      "nag_optax.stop_when(...) (auto_nag() already is)."
    )
  return found


def should_stop(state) -> jax.Array:
  """The stopping signal of the (outermost) ``stop_when`` state found anywhere in ``state``.

  Works on a chain's tuple, inside ``optax.inject_hyperparams`` or ``MultiSteps`` states, on
  Flax NNX's ``optimizer.opt_state``, and on batched (vmapped) states, where it returns one bool
  per problem.

  Examples:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(optax.clip(1.0), nag_optax.stop_when(nag_optax.nag(0.1), max_steps=1))
    >>> state = tx.init(jnp.zeros(2))
    >>> bool(nag_optax.should_stop(state))
    False
  """
  return jnp.asarray(numerics.unbox(stop_states(state)[0].stop))


def stop_reason(state):
  """Why the signal fired: a :class:`StopReason`; for a batched (vmapped) concrete state a NumPy
  object array of them; inside ``jit`` (a traced state) the int32 code array.

  Examples:
    >>> import jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.stop_when(nag_optax.nag(0.1), max_steps=0)
    >>> _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    >>> nag_optax.stop_reason(state)
    <StopReason.MAX_STEPS: 5>
  """
  return reasons_from_codes(numerics.unbox(stop_states(state)[0].reason))


def reasons_from_codes(codes):
  """int32 reason codes as :class:`StopReason`: one for a 0-d concrete code, a NumPy object array
  of them for batched codes; traced codes (inside ``jit``) are returned as they are."""
  if isinstance(codes, jax.core.Tracer):
    return codes
  codes = np.asarray(codes)
  if codes.ndim == 0:
    return StopReason(int(codes))
  out = np.empty(codes.shape, dtype=object)
  for index, code in np.ndenumerate(codes):
    out[index] = StopReason(int(code))
  return out
