"""Minibatch learning rates: adapted online from noisy gradients.

The full-batch step rules of :mod:`step_size` read exact values and gradients; these read only
the minibatch gradients a training loop computes anyway, and average their noise over many
steps. :func:`scale_by_distance` estimates the distance to a solution from the whole run
(Prodigy's D); :func:`scale_by_hypergradient` adapts the rate from successive steps.
"""

import math
from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation


def _feed_plateau(plateau, plateau_state, scale, value, finite, dtype):
  """(the plateau's new scale, its new state) after feeding it ``value``; unchanged without a
  plateau or a ``value``, and a non-finite step or loss never reaches it."""
  if plateau is None or value is None:
    return scale, plateau_state
  unit, new_state = plateau.update(jnp.ones((), dtype), plateau_state, value=value)
  feed = finite & jnp.isfinite(jnp.asarray(value))
  return (
    jnp.where(feed, jnp.asarray(unit, dtype), scale),
    optax.tree.where(feed, new_state, plateau_state),
  )


def _check_plateau(plateau) -> None:
  if plateau is not None and not isinstance(plateau, optax.GradientTransformation):
    raise TypeError(
      "plateau must be an optax transformation (e.g. "
      f"optax.contrib.reduce_on_plateau()), got {type(plateau).__name__}."
    )


def _max_weight(tree) -> float:
  """The bound on the weight of the weighted moments: the square of a gradient times at most
  ``max ** 0.25`` stays finite in the narrowest floating dtype of ``tree``."""
  return min(
    (float(jnp.finfo(x.dtype).max) ** 0.25 for x in jax.tree.leaves(tree)), default=math.inf
  )


class AnnealAfterProgressState(NamedTuple):
  """State of :func:`anneal_after_progress`."""

  count: jax.Array  #: int32: losses received.
  window_sum: jax.Array  #: the sum of the losses of the current window.
  initial: jax.Array  #: the mean loss of the first window (inf until it is complete).
  progressed: jax.Array  #: bool: a window's mean loss has fallen ``drop`` below ``initial``.
  inner: Any  #: the state of the wrapped annealing.


def anneal_after_progress(
  plateau: optax.GradientTransformation, drop: float = 0.1, window: int = 25
) -> optax.GradientTransformationExtraArgs:
  r"""Hold an annealing on the loss (``reduce_on_plateau``) until the loss has started to fall.

  An annealing that halves the step when the loss stops setting new lows reads a flat loss as
  convergence, but a run that has not started learning is flat too: recurrent networks, for one,
  often sit at the chance-level loss for hundreds of steps before their loss falls, and an
  annealing fed that stretch cuts the step to its floor before training begins (on the MNIST-1D
  GRU of ``benchmarks/heldout.py``, ``auto_nag_sgd``'s best accuracy 0.41 against 0.96 without
  it). This wrapper passes the updates through unchanged (the unit scale) and does not feed
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
  _check_plateau(plateau)
  if plateau is None:
    raise TypeError("plateau must be an optax transformation, got None.")
  validation.check_range("drop", drop, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
  validation.check_int("window", window, allow_none=False)
  if window < 1:
    raise ValueError(f"window must be at least 1, got {window}.")
  inner = optax.with_extra_args_support(plateau)

  def init_fn(params):
    params = validation.as_arrays(params)
    return AnnealAfterProgressState(
      count=jnp.zeros((), jnp.int32),
      window_sum=jnp.zeros((), jnp.float32),
      initial=jnp.full((), jnp.inf, jnp.float32),
      progressed=jnp.zeros((), bool),
      inner=plateau.init(params),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    if value is None:
      raise ValueError("anneal_after_progress needs the loss as the value extra argument.")
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
      updates, state.inner, params, value=value, **extra_args
    )
    new_updates = optax.tree.where(progressed, inner_updates, updates)
    new_state = AnnealAfterProgressState(
      count=count,
      window_sum=jnp.where(closes, 0.0, window_sum),
      initial=initial,
      progressed=progressed,
      inner=optax.tree.where(progressed, inner_state, state.inner),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByDistanceState(NamedTuple):
  """State of :func:`scale_by_distance`."""

  count: jax.Array  #: int32: updates taken.
  learning_rate: jax.Array  #: the rate the next update applies, ``step_scale * d * plateau_scale``.
  distance: jax.Array  #: d_k, the distance estimate; never decreases after the first update.
  initial_distance: jax.Array  #: d_0, the (capped) initial estimate.
  #: ``(W1, W2, U1, U2)``: EMAs of ``w``, ``w^2``, ``1`` and ``1`` at the decays ``(b1, b2, b1,
  #: b2)`` over the finite updates (``weighted_direction``); ``(w_k, W2, 0, 0)`` with ``W2`` the
  #: EMA of ``w^2`` at ``rms_decay`` (``weighted_mean_square``); zeros otherwise.
  weight_averages: jax.Array
  numerator: jax.Array  #: r_k = sum_i decay^(k-i) d_i^2 <g_i, x_0 - x_i>.
  mean_square: jax.Array  #: EMA of mean(g^2) (default direction; 0 otherwise).
  max_mean_square: jax.Array  #: its decayed running maximum, the default direction's normaliser.
  plateau_scale: jax.Array  #: the factor of `plateau` on the step (1 without it).
  initial_params: Any  #: x_0, the params at the first update.
  grad_sum: Any  #: s_k = sum_i decay^(k-i) d_i^2 g_i.
  direction: Any  #: state of the `direction` transformation (() for the default).
  plateau: Any  #: state of the `plateau` transformation (() without it).


def scale_by_distance(
  learning_rate: float = 1e-6,
  *,
  direction: Optional[optax.GradientTransformation] = None,
  decay: float = 0.9995,
  step_scale: float = 1.0,
  max_relative_step: Optional[float] = 0.1,
  growth_rate: Optional[float] = None,
  rms_decay: float = 0.999,
  max_rms_decay: float = 0.998,
  eps: float = 1e-8,
  plateau: Optional[optax.GradientTransformation] = None,
  weighted_direction: Optional[tuple[jax.typing.ArrayLike, jax.typing.ArrayLike]] = None,
  weighted_mean_square: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Learning rate from an estimate of the distance to a solution, over the whole run.

  The rate is a running lower estimate of the distance ``D`` between the first params and a
  minimiser, the D of D-Adaptation and Prodigy (Defazio & Mishchenko 2023, Mishchenko & Defazio
  2024). With ``g_k`` the gradient at ``x_k``, ``a_k`` the direction and weights
  ``lambda_k = d_k^2``:

  .. math::

    u_k &= -\sigma d_k a_k, \\
    r_k &= \beta r_{k-1} + \lambda_k \langle g_k, x_0 - x_k \rangle, \qquad
    s_k = \beta s_{k-1} + \lambda_k g_k, \\
    d_{k+1} &= \max\left(d_k, \frac{r_k}{\|s_k\|_1}\right),

  with ``sigma = step_scale`` and ``beta = decay``. The direction is the output of
  ``direction`` (e.g. Adam's ``m / (sqrt(v) + eps)``) or by default the plain gradient over one
  global scale, ``a_k = g_k / (sqrt(n_k) + eps)``, with ``v_k`` the bias-corrected EMA of the mean
  square of ``g`` and ``n_k = max(v_k, gamma n_{k-1})`` its running maximum that may fall by at
  most ``gamma = max_rms_decay`` per update: an SGD step ``-(d_k / sqrt(n_k)) g_k`` whose
  effective rate does not shoot up when the gradients shrink (with ``n_k = v_k``, a normalised
  gradient step, the rate grows without bound as the gradients fall). For a convex loss
  ``r_k <= ||s_k||_1 ||x_0 - x_*||_inf``, so the estimate never exceeds the distance to the
  minimiser while it grows geometrically from a small start.

  Why it cannot collapse: the signal is the gradient against the displacement from the start,
  accumulated over the run, not against the last step. A one-step (hypergradient) cosine is
  negative on average once minibatch noise dominates (the short-horizon bias of greedy
  learning-rate adaptation, Wu et al. 2018): a rule driven by it shrinks the rate geometrically
  to its floor and training freezes. The distance estimate only ever grows, so the rate stays
  where the start of training put it; an annealing on top of it, if wanted, is the user's (a
  schedule in ``optax.chain``) or the stopping signal's business.

  ``init`` caps the initial guess: ``d_0 = min(learning_rate, max_relative_step *
  max(rms(x_0), 1e-3))`` (``rms`` the root mean square of the params), so a too large
  ``learning_rate`` (which the growing estimate could never undo) is cut to a step of a tenth of
  the typical parameter size; a small one grows by the estimate within tens of steps.

  The estimate reads the raw gradient ``g_k`` (the incoming updates) and the params; the
  direction only shapes the step. With momentum downstream (``nesterov(b)``, which sums steps),
  ``step_scale = 1 - b`` keeps the effective step at ``d_k a_k``.

  Weighted moments. With an Adam-like ``direction`` (moments with decays ``b1``, ``b2`` and
  their bias corrections, e.g. ``optax.scale_by_adam(b1, b2)``), ``weighted_direction=(b1,
  b2)`` makes its moments weighted averages of the gradients, with weights ``w_k = d_k / d_0``,
  as Prodigy's Adam moments are sums of ``d_k g_k`` and ``d_k^2 g_k^2`` (its Algorithm 4): the
  moments forget the gradients of the warm-up, taken while ``d_k`` was still small, instead of
  carrying them (a second moment with ``b2 = 0.999`` remembers about a thousand steps). The
  direction is fed ``w_k g_k`` and its output is multiplied by

  .. math::

    c_k = \frac{U^1_k}{W^1_k} \sqrt{\frac{W^2_k}{U^2_k}}, \qquad
    W^1_k = b_1 W^1_{k-1} + (1 - b_1) w_k, \quad W^2_k = b_2 W^2_{k-1} + (1 - b_2) w_k^2,

  with ``U^1_k = 1 - b_1^k``, ``U^2_k = 1 - b_2^k`` (the EMAs of ``1``): that turns Adam's bias
  correction, right for equal weights, into the normalisation of the weighted averages,
  ``m = sum b1^(k-i) w_i g_i / sum b1^(k-i) w_i`` and the same for ``v`` with ``w_i^2``. Without
  it the first steps after the warm-up divide by a second moment that bias correction
  underestimates, several times too large a step (measured: runs that diverge). With a
  constant ``d``, ``c_k = 1`` and the direction is exactly Adam's; its ``eps`` acts on the
  weighted moments. The weight is bounded by ``finfo(dtype).max ** 0.25`` (the narrowest float
  dtype of the gradients) so that a ``float16`` second moment cannot overflow.

  The default direction's counterpart, ``weighted_mean_square=True``: its mean square is the
  average weighted by ``w_k^2``, ``v_k = sum rho^(k-i) w_i^2 mean(g_i^2) / sum rho^(k-i) w_i^2``
  (``rho = rms_decay``, replacing bias correction), and its running maximum forgets as fast as
  the weights grow, ``n_k = max(v_k, gamma (w_{k-1} / w_k)^2 n_{k-1})``: the normaliser measures
  the gradients at the current scale of ``d`` instead of those of the warm-up.

  Args:
    learning_rate: the initial estimate ``d_0`` (any value from ``1e-8`` up: too small grows,
      too large is capped by ``max_relative_step``).
    direction: an optax transformation giving the step direction from the gradient (its output
      is scaled by ``-step_scale * d_k``), or ``None`` for ``g / sqrt(EMA mean(g^2))``.
    decay: ``beta`` in ``(0, 1]``, the forgetting of old terms of ``r`` and ``s``.
    step_scale: ``sigma > 0``, multiplies the step (not the estimate).
    max_relative_step: the cap of the initial guess, relative to the params' rms; ``None`` for
      none.
    growth_rate: the largest factor by which ``d`` may grow per update (``None``: unbounded).
    rms_decay: the EMA factor of the default direction's mean square.
    max_rms_decay: ``gamma`` in ``[0, 1]``, how fast the default direction's normaliser may fall.
    eps: added to the default direction's root mean square.
    plateau: an optax transformation taking ``value=`` whose output scales a unit input
      (``optax.contrib.reduce_on_plateau(..., min_scale=...)``): its factor multiplies the step
      (not the estimate), an annealing bounded by its ``min_scale``; ``None`` for none. Fed only
      finite ``value`` extra arguments; without ``value`` it never decays.
    weighted_direction: ``(b1, b2)``, the moment decays of an Adam-like ``direction`` whose
      moments become averages weighted by ``d_k / d_0`` (see above); ``None`` (default) feeds
      it the gradients as they are.
    weighted_mean_square: the default direction's mean square weighted the same way (see above);
      only without ``direction``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state's ``learning_rate`` is the rate the
    next update applies to the direction (``step_scale * d`` times the plateau factor),
    ``distance`` is ``d``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.scale_by_distance()
    >>> x = jnp.array([3.0, -2.0])
    >>> state = tx.init(x)
    >>> for _ in range(300):
    ...   updates, state = tx.update(2 * (x - 1.0), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 2), float(state.distance) > 0.1)
    [1. 1.] True

  References:
    Defazio & Mishchenko, `Learning-rate-free learning by D-Adaptation
    <https://arxiv.org/abs/2301.07733>`_, ICML 2023.

    Mishchenko & Defazio, `Prodigy: an expeditiously adaptive parameter-free learner
    <https://arxiv.org/abs/2306.06101>`_, ICML 2024.

    Wu, Ren, Liao & Grosse, `Understanding short-horizon bias in stochastic meta-optimization
    <https://arxiv.org/abs/1803.02021>`_, ICLR 2018.
  """
  validation.check_range("learning_rate", learning_rate, low=0.0, low_inclusive=False)
  validation.check_range("decay", decay, low=0.0, high=1.0, low_inclusive=False)
  validation.check_range("step_scale", step_scale, low=0.0, low_inclusive=False)
  if max_relative_step is not None:
    validation.check_range("max_relative_step", max_relative_step, low=0.0, low_inclusive=False)
  if growth_rate is not None:
    validation.check_range("growth_rate", growth_rate, low=1.0)
  validation.check_range("rms_decay", rms_decay, low=0.0, high=1.0, high_inclusive=False)
  validation.check_range("max_rms_decay", max_rms_decay, low=0.0, high=1.0)
  validation.check_range("eps", eps, low=0.0)
  if direction is not None:
    if not isinstance(direction, optax.GradientTransformation):
      raise TypeError(
        f"direction must be an optax transformation or None, got {type(direction).__name__}."
      )
    direction = optax.with_extra_args_support(direction)
    if weighted_mean_square:
      raise ValueError(
        "weighted_mean_square weights the default direction's mean square; with a direction, "
        "use weighted_direction=(b1, b2)."
      )
  elif weighted_direction is not None:
    raise ValueError("weighted_direction needs a direction (it weights the direction's moments).")
  if weighted_direction is not None:
    if len(weighted_direction) != 2:
      raise ValueError(f"weighted_direction must be (b1, b2), got {weighted_direction!r}.")
    for name, b in zip(("weighted_direction[0]", "weighted_direction[1]"), weighted_direction):
      validation.check_range(name, b, low=0.0, high=1.0, high_inclusive=False)
  _check_plateau(plateau)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    d0 = jnp.asarray(learning_rate, dtype)
    if max_relative_step is not None:
      # The cap, read from x_0 (the params the estimate measures from).
      size = max(sum(x.size for x in jax.tree.leaves(params)), 1)
      acc = jnp.promote_types(dtype, jnp.float32)
      rms_params = numerics.norm(params, acc) / jnp.sqrt(jnp.asarray(size, acc))
      cap = (max_relative_step * jnp.maximum(rms_params, 1e-3)).astype(dtype)
      d0 = jnp.minimum(d0, cap)
    return ScaleByDistanceState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=(step_scale * d0).astype(dtype),
      distance=d0,
      initial_distance=d0,
      weight_averages=jnp.zeros((4,), dtype),
      numerator=jnp.zeros((), dtype),
      mean_square=jnp.zeros((), dtype),
      max_mean_square=jnp.zeros((), dtype),
      # A copy, not the caller's arrays, so the state can be donated with the params.
      initial_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
      grad_sum=optax.tree.zeros_like(params),
      direction=direction.init(params) if direction is not None else (),
      plateau_scale=jnp.ones((), dtype),
      plateau=plateau.init(jnp.ones((), dtype)) if plateau is not None else (),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    if params is None:
      raise ValueError("scale_by_distance needs params: its estimate reads x_0 - x_k.")
    dtype = state.distance.dtype
    acc = jnp.promote_types(dtype, jnp.float32)
    size = max(sum(x.size for x in jax.tree.leaves(params)), 1)
    d = state.distance
    lam = d * d
    # The global sums this step needs: sum g^2 (the default direction's mean square; finite iff
    # every g is), the estimate's <g, x_0 - x> and ||s_new||_1 = ||decay s + lam g||_1 (lam from
    # this step's d: a new d reaches the next step), written as decay ||s + (lam / decay) g||_1
    # so that it shares no subexpression with the state's s_new (a shared one is materialized).
    grad_sq, numerator_term, l1 = numerics.sums(
      lambda g, p0, p, s_: (g * g, g * (p0 - p), jnp.abs(s_ + (lam / decay).astype(acc) * g)),
      updates,
      state.initial_params,
      params,
      state.grad_sum,
      dtype=acc,
    )
    l1 = decay * l1
    finite = jnp.isfinite(grad_sq)
    averages, dir_scale = state.weight_averages, 1.0
    # The weighted moments' weight w_k = d_k / d_0, bounded so that (w g)^2 stays finite (a
    # scalar, unused and dropped by XLA without weighted_direction / weighted_mean_square).
    w = jnp.minimum(numerics.safe_div(d, state.initial_distance, 1.0), _max_weight(updates))
    if direction is None:
      mean_square = grad_sq / size
      if weighted_mean_square:
        w_prev = jnp.where(state.count == 0, w, averages[0])
        w2 = rms_decay * averages[1] + (1.0 - rms_decay) * w * w
        v = rms_decay * state.mean_square + (1.0 - rms_decay) * (w * w) * mean_square.astype(dtype)
        fall = max_rms_decay * numerics.safe_div(w_prev, w, 1.0) ** 2
        vmax = jnp.maximum(numerics.safe_div(v, w2), fall * state.max_mean_square)
        averages = jnp.where(finite, averages.at[0].set(w).at[1].set(w2), averages)
      else:
        v = rms_decay * state.mean_square + (1.0 - rms_decay) * mean_square.astype(dtype)
        bias = 1.0 - rms_decay ** jnp.asarray(optax.safe_increment(state.count)).astype(dtype)
        vmax = jnp.maximum(v / bias, max_rms_decay * state.max_mean_square)
      inv = 1.0 / (jnp.sqrt(vmax) + eps)
      dir_updates, dir_state = numerics.scale(inv, updates), ()
      v = jnp.where(finite, v, state.mean_square)
      vmax = jnp.where(finite, vmax, state.max_mean_square)
    else:
      dir_in = updates
      if weighted_direction is not None:
        dir_in = numerics.scale(w, updates)
        b1, b2 = (jnp.asarray(b, acc) for b in weighted_direction)
        decays = jnp.stack([b1, b2, b1, b2])
        terms = jnp.stack([w, w * w, jnp.ones_like(w), jnp.ones_like(w)])
        new_averages = decays * averages + (1.0 - decays) * terms
        w1, w2, u1, u2 = new_averages[0], new_averages[1], new_averages[2], new_averages[3]
        dir_scale = numerics.safe_div(u1, w1, 1.0) * jnp.sqrt(numerics.safe_div(w2, u2, 1.0))
        averages = jnp.where(finite, new_averages, averages)
      dir_updates, dir_state = direction.update(
        dir_in, state.direction, params, value=value, **extra_args
      )
      v, vmax = state.mean_square, state.max_mean_square
    scale, plateau_state = _feed_plateau(
      plateau, state.plateau, state.plateau_scale, value, finite, dtype
    )
    rate = step_scale * d * scale * dir_scale
    new_updates = jax.tree.map(
      lambda a, g: (-rate * a.astype(acc)).astype(g.dtype), dir_updates, updates
    )

    numerator = decay * state.numerator + lam * numerator_term.astype(dtype)
    grad_sum = jax.tree.map(
      lambda s_, g: (decay * s_ + lam * g).astype(s_.dtype), state.grad_sum, updates
    )
    estimate = numerics.safe_div(numerator, l1.astype(dtype))
    if growth_rate is not None:
      estimate = jnp.minimum(estimate, growth_rate * d)
    new_d = jnp.where(finite, jnp.maximum(d, estimate), d)
    keep = lambda new, old: optax.tree.where(finite, new, old)
    new_state = ScaleByDistanceState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      learning_rate=(step_scale * new_d * scale).astype(dtype),
      distance=new_d.astype(dtype),
      initial_distance=state.initial_distance,
      weight_averages=averages.astype(dtype),
      numerator=jnp.where(finite, numerator, state.numerator).astype(dtype),
      mean_square=v.astype(dtype),
      max_mean_square=vmax.astype(dtype),
      initial_params=state.initial_params,
      grad_sum=keep(grad_sum, state.grad_sum),
      direction=keep(dir_state, state.direction) if direction is not None else (),
      plateau_scale=scale.astype(dtype),
      plateau=plateau_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByHypergradientState(NamedTuple):
  """State of :func:`scale_by_hypergradient`."""

  count: jax.Array  #: int32: updates taken.
  learning_rate: jax.Array  #: the adapted rate over all leaves, ||eta g|| / ||g|| (cap excluded).
  hypergradient: jax.Array  #: the latest cosine c_t between -g_t and the previous applied step.
  plateau_scale: jax.Array  #: product of the plateau decays so far (1 without `plateau`).
  leaf_learning_rates: Any  #: one rate per leaf of params (all equal unless per_leaf).
  warming_up: Any  #: bool, per leaf: still in the initial doubling phase.
  prev_params: Any  #: the params of the previous update (their difference is the applied step).
  plateau: Any  #: the state of the `plateau` transformation (() without it).


def _leaf_sums(a, b, dtype):
  """Per leaf: trees of the scalars ``<a, b>``, ``||a||^2`` and ``||b||^2``.

  Elementwise products and full reductions (no reshape), so sharded leaves reduce across
  devices without being gathered.
  """
  a = optax.tree.cast(a, dtype)
  b = optax.tree.cast(b, dtype)
  dots = jax.tree.map(lambda x, y: jnp.sum(x * y), a, b)
  aa = jax.tree.map(lambda x: jnp.sum(x * x), a)
  bb = jax.tree.map(lambda y: jnp.sum(y * y), b)
  return dots, aa, bb


def _cos(dot, aa, bb):
  """dot / sqrt(aa bb) clipped to [-1, 1], or 0 where either norm is zero or it is not finite."""
  return jnp.clip(numerics.safe_div(dot, jnp.sqrt(aa) * jnp.sqrt(bb)), -1.0, 1.0)


def scale_by_hypergradient(
  learning_rate: float = 1e-3,
  *,
  hypergradient_rate: float = 0.1,
  warmup_growth: Optional[float] = 2.0,
  max_relative_step: Optional[float] = 0.1,
  learning_rate_bounds: tuple = (1e-8, 1e3),
  plateau: Optional[optax.GradientTransformation] = None,
  per_leaf: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Learning rate adapted online from the alignment of successive steps (hypergradient).

  The multiplicative hypergradient rule of Baydin et al. (2018): with ``d_{t-1} = x_t - x_{t-1}``
  the step actually applied at the previous update (momentum, weight decay and anything else
  in the chain included, read off the successive ``params``), and

  .. math::

    c_t = \cos(-g_t, d_{t-1}) = -\frac{\langle g_t, d_{t-1} \rangle}{\|g_t\| \|d_{t-1}\|},
    \qquad \eta_t = \eta_{t-1} (1 + \beta c_t), \qquad u_t = -\eta_t g_t .

  ``-beta c_t eta_{t-1}`` is a normalised step of gradient descent on the loss as a function of
  the learning rate: when the new gradient still points along the last step (``c_t > 0``, the
  step was too short) the rate grows, when it points back (``c_t < 0``, overshoot) it shrinks.
  The cosine makes the rule scale-free: multiplying the loss or the parameters by a constant
  does not change ``c_t``. It is the stochastic counterpart of the curvature and backtracking
  steps: it reads only the gradients the training loop computes anyway, and averages the
  minibatch noise in ``c_t`` over many steps.

  Over long minibatch runs this rule shrinks the rate to its lower bound: once noise dominates,
  ``c_t`` is negative on average (the short-horizon bias of greedy learning-rate adaptation,
  Wu et al. 2018), so the rate decays geometrically and training freezes. It suits short runs and
  deterministic problems; for whole training runs use :func:`scale_by_distance` (what
  :func:`auto_nag_sgd` and :func:`auto_nadamw` are built on).

  Safeguards:

  * **Warm-up doubling.** While every ``c_t`` since the start has been positive, the rate
    doubles (``warmup_growth``) at each update instead of growing by ``1 + beta``; the first
    non-positive ``c_t`` ends the phase for good. A start from ``1e-4`` reaches a useful rate
    in about a dozen steps instead of a hundred.
  * **Relative step cap.** ``||u_t|| <= max_relative_step * ||x_t||``: no single update
    moves the parameters by more than that fraction of their norm (a global, LARS-like trust
    ratio; computed on ``g / max|g|``, so it holds for any finite gradient). At the first
    update and during the warm-up the capped rate is also stored: a start at ``lr = 10`` is
    cut back to the cap instead of blowing the network up. Later the stored rate follows the
    cap down by at most a factor 2 per step, so one outlier minibatch does not collapse the
    adapted rate.
  * **Bounds.** The rate stays in ``learning_rate_bounds`` (the upper bound shrinks with the
    plateau decay).
  * **Non-finite input.** A non-finite gradient, step or cosine leaves the rate unchanged
    (``c_t = 0``); the state never holds a non-finite rate. Pair with :func:`stop_when` so the
    update itself is skipped.

  ``per_leaf=True`` keeps one rate per leaf of ``params`` (per layer weight and bias, as Baydin
  et al.'s per-parameter-group variant and LARS do), each adapted from its own cosine: a layer
  that overshoots shrinks its own rate without dragging the others down; the warm-up is per leaf
  too, and the relative step cap stays global (it scales every leaf's rate by the
  same factor). The state's ``learning_rate`` is then the adapted rate over all leaves,
  ``||eta_t g_t|| / ||g_t||``.

  ``plateau`` is an optional schedule on ``value`` such as
  ``optax.contrib.reduce_on_plateau(...)``: it is fed the loss at each update and each factor by
  which it reduces its scale multiplies the rate and its upper bound. Between decays the
  hypergradient may grow the rate again (by at most ``1 + beta`` per step, never above the
  decayed upper bound); in the noise-dominated late phase of training ``c_t`` is mostly
  negative and it does not. A non-finite ``value`` is not fed. Without ``value`` (Flax
  ``TrainState``) the plateau is never fed and the rate adapts from the gradients alone.

  Precision: the applied step is read from successive ``params``. With bfloat16 / float16
  params, steps below their resolution leave ``params`` unchanged, ``c_t = 0``, and the rate
  stops adapting; keep float32 master params (as mixed-precision training does anyway).

  Args:
    learning_rate: the initial rate (the warm-up and the cap correct a poor guess).
    hypergradient_rate: ``beta`` in ``[0, 1)``: the largest relative change of the rate per step
      after the warm-up. ``0`` keeps the rate fixed (bounds, cap and plateau still apply).
    warmup_growth: the factor (``>= 1``) of the initial doubling phase; ``None`` for none.
    max_relative_step: the cap on ``||u_t|| / ||x_t||`` (``> 0``); ``None`` for none. Norms of
      parameters below ``1e-3`` count as ``1e-3``, so parameters starting at zero can move.
    learning_rate_bounds: ``(lower, upper)``, ``0 < lower < upper``.
    plateau: an optax transformation taking ``value=`` whose output scales a unit input
      (``optax.contrib.reduce_on_plateau``), or ``None``.
    per_leaf: one rate per leaf of ``params`` instead of one for all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state exposes ``learning_rate``, the
    adapted rate ``||eta_t g_t|| / ||g_t||`` of the latest update before the cap's one-step
    clip (the rate itself without ``per_leaf``), read by ``optax.tree.get`` and by
    ``stop_when(min_learning_rate=...)``, and ``leaf_learning_rates``. It needs ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(nag_optax.scale_by_hypergradient(1e-4), nag_optax.nesterov(0.9))
    >>> x = jnp.array([3.0, -2.0])
    >>> state = tx.init(x)
    >>> for _ in range(8):
    ...   updates, state = tx.update(2 * x, state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(float(optax.tree.get(state, "learning_rate")) > 1e-3)  # grown by the warm-up
    True

  References:
    Baydin, Cornish, Martinez Rubio, Schmidt & Wood, `Online learning rate adaptation with
    hypergradient descent <https://arxiv.org/abs/1703.04782>`_, ICLR 2018 (SGDN-HD and the
    multiplicative rule).
  """
  validation.check_range("learning_rate", learning_rate, low=0.0, low_inclusive=False)
  validation.check_range(
    "hypergradient_rate", hypergradient_rate, low=0.0, high=1.0, high_inclusive=False
  )
  if warmup_growth is not None:
    validation.check_range("warmup_growth", warmup_growth, low=1.0)
  if max_relative_step is not None:
    validation.check_range("max_relative_step", max_relative_step, low=0.0, low_inclusive=False)
  if not isinstance(learning_rate_bounds, (tuple, list)) or len(learning_rate_bounds) != 2:
    raise ValueError(
      f"learning_rate_bounds must be a pair (lower, upper), got {learning_rate_bounds!r}."
    )
  lower, upper = learning_rate_bounds
  validation.check_range("learning_rate_bounds[0]", lower, low=0.0, low_inclusive=False)
  validation.check_range("learning_rate_bounds[1]", upper, low=lower, low_inclusive=False)
  _check_plateau(plateau)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    rate = jnp.clip(jnp.asarray(learning_rate, dtype), lower, upper)
    return ScaleByHypergradientState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=rate,
      hypergradient=jnp.zeros((), dtype),
      plateau_scale=jnp.ones((), dtype),
      leaf_learning_rates=jax.tree.map(lambda _: rate, params),
      warming_up=jax.tree.map(lambda _: jnp.asarray(warmup_growth is not None), params),
      # Read only from the second update on (after it holds the previous params); fresh zeros,
      # not the caller's arrays, so a state built by init can be donated with the params.
      prev_params=optax.tree.zeros_like(params),
      plateau=plateau.init(jnp.ones((), dtype)) if plateau is not None else (),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    del extra_args
    if params is None:
      raise ValueError(
        "scale_by_hypergradient needs params: the applied step it adapts to is "
        "the difference of successive params."
      )
    dtype = state.learning_rate.dtype
    rates = state.leaf_learning_rates
    finite = numerics.all_finite(updates)
    # Everything below reads gs = g / max|g| (two multiplications by 1/sqrt(max|g|), whose
    # reciprocal stays a normal float), so no norm overflows for huge finite gradients; the
    # cosines and the cap are scale-free in g.
    gmax = jnp.asarray(optax.tree.max(jax.tree.map(lambda g: jnp.max(jnp.abs(g)), updates)), dtype)
    gmax = jnp.where(finite & (gmax > 0), gmax, 1.0)
    rsq = jax.lax.rsqrt(gmax)
    scaled = jax.tree.map(lambda g: g.astype(dtype) * rsq * rsq, updates)
    step = jax.tree.map(lambda p, q: p - q, params, state.prev_params)
    dots, gg, dd = _leaf_sums(scaled, step, dtype)
    use = finite & (state.count > 0)
    global_cos = jnp.where(
      use, -_cos(optax.tree.sum(dots), optax.tree.sum(gg), optax.tree.sum(dd)), 0.0
    )
    if per_leaf:
      cosines = jax.tree.map(lambda *t: jnp.where(use, -_cos(*t), 0.0), dots, gg, dd)
    else:
      cosines = jax.tree.map(lambda _: global_cos, rates)

    # The first update has no previous step (c = 0); the warm-up ends at the first c <= 0 after.
    warming = jax.tree.map(
      lambda w, c: w & ((c > 0) | (state.count < 1)), state.warming_up, cosines
    )
    new_rates = jax.tree.map(lambda eta, c: eta * (1.0 + hypergradient_rate * c), rates, cosines)
    if warmup_growth is not None:
      new_rates = jax.tree.map(
        lambda w, c, eta, new: jnp.where(w & (c > 0), eta * warmup_growth, new),
        warming,
        cosines,
        rates,
        new_rates,
      )

    scale = state.plateau_scale
    new_scale, plateau_state = _feed_plateau(plateau, state.plateau, scale, value, finite, dtype)
    if plateau is not None and value is not None:
      ratio = numerics.safe_div(new_scale, scale, default=1.0)
      new_rates = jax.tree.map(lambda eta: eta * ratio, new_rates)
    scale = new_scale
    high = jnp.maximum(upper * scale, lower)
    new_rates = jax.tree.map(lambda eta: jnp.clip(eta, lower, high), new_rates)
    # A non-finite gradient leaves every rate as it was.
    new_rates = optax.tree.where(finite, new_rates, rates)

    # The cap applies to the emitted step: ||u|| <= rho ||x||. With ||u|| = gmax * s and
    # s = ||eta gs||, the step is u = -(eta k) gs with k = min(gmax, rho ||x|| / s): k = gmax
    # is the plain u = -eta g. The capped rate is stored at the first update and during the
    # warm-up (it tames a wild initial guess and stops the doubling); later the stored rate
    # follows the cap down by at most a factor 2 per step, so one outlier minibatch does not
    # collapse it while a cap that keeps binding still brings it down within a few steps.
    def step_norm(rates):
      return jnp.sqrt(optax.tree.sum(jax.tree.map(lambda eta, g2: jnp.square(eta) * g2, rates, gg)))

    s_norm = step_norm(new_rates)
    gnorm_scaled = jnp.sqrt(optax.tree.sum(gg))
    if max_relative_step is not None:
      pnorm = jnp.maximum(numerics.norm(params, dtype), 1e-3)
      bound = max_relative_step * pnorm
      k = jnp.minimum(gmax, numerics.safe_div(bound, s_norm, default=bound))
      k = jnp.where(finite, k, gmax)
      new_updates = jax.tree.map(
        lambda eta, gs, g: (-(eta * k) * gs).astype(g.dtype), new_rates, scaled, updates
      )
      emitted = jax.tree.map(lambda eta: eta * (k / gmax), new_rates)  # underflows at |g| ~ 1e38
      new_rates = jax.tree.map(
        lambda w, e, eta: jnp.maximum(
          jnp.where((state.count < 1) | w, e, jnp.maximum(e, 0.5 * eta)), lower
        ),
        warming,
        emitted,
        new_rates,
      )
      s_norm = step_norm(new_rates)
    else:
      new_updates = jax.tree.map(
        lambda eta, g: (-eta * g.astype(dtype)).astype(g.dtype), new_rates, updates
      )
    # The adapted (stored) rate over all leaves, ||eta g|| / ||g||: the rate itself without
    # per_leaf. A one-step clip by the cap is not a decayed rate, so it is not reported here.
    effective_now = numerics.safe_div(s_norm, gnorm_scaled)
    effective = jnp.where(finite & (gnorm_scaled > 0), effective_now, state.learning_rate)

    new_state = ScaleByHypergradientState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      learning_rate=effective.astype(dtype),
      hypergradient=global_cos.astype(dtype),
      plateau_scale=scale.astype(dtype),
      leaf_learning_rates=optax.tree.cast(new_rates, dtype),
      warming_up=warming,
      prev_params=params,
      plateau=plateau_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
