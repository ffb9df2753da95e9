"""The minibatch learning rate from an estimate of the distance to a solution (Prodigy's D).

The full-batch step rules read exact values and gradients; this one reads only the minibatch
gradients a training loop computes anyway, and accumulates them over the whole run, so the
noise of any one step averages out and the rate cannot collapse.
"""

import math
import typing
from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import annealing
from nag_optax._src import numerics
from nag_optax._src import sampling
from nag_optax._src import validation


def _is_inf(value) -> bool:
  """Whether ``value`` is the Python number inf (no cap); an array or tracer is a cap."""
  return isinstance(value, (int, float)) and math.isinf(value)


def _max_weight(tree) -> float:
  """The bound on the weight of the weighted moments: the square of a gradient times at most
  ``max ** 0.25`` stays finite in the narrowest floating dtype of ``tree``."""
  return min(
    (float(jnp.finfo(x.dtype).max) ** 0.25 for x in jax.tree.leaves(tree)), default=math.inf
  )


class ScaleByDistanceState(NamedTuple):
  """State of :func:`scale_by_distance`."""

  count: jax.Array  #: int32: updates taken.
  #: The rate the next update applies: ``learning_rate * step_scale * d`` times the plateau factor.
  learning_rate: jax.Array
  distance: jax.Array  #: d_k, the distance estimate; never decreases after the first update.
  plateau_scale: jax.Array  #: the factor of `plateau` on the step (1 without it).
  #: The estimate's other scalars, packed (one leaf, not eight: Flax NNX pays per leaf on every
  #: jitted call); read them by name: ``initial_distance``, ``numerator``, ``mean_square``,
  #: ``max_mean_square``, ``weight_averages``.
  statistics: jax.Array
  initial_params: Any  #: x_0, the params at the first update, on the subsample.
  grad_sum: Any  #: s_k = sum_i decay^(k-i) d_i^2 g_i, on the subsample.
  direction: Any  #: state of the `direction` transformation (() for the default).
  plateau: Any  #: state of the `plateau` transformation (() without it).

  @property
  def initial_distance(self) -> jax.Array:
    """d_0, the (capped) initial estimate."""
    return self.statistics[..., 0]

  @property
  def numerator(self) -> jax.Array:
    """r_k = sum_i decay^(k-i) d_i^2 <g_i, x_0 - x_i>."""
    return self.statistics[..., 1]

  @property
  def mean_square(self) -> jax.Array:
    """EMA of mean(g^2) (the default direction; 0 otherwise)."""
    return self.statistics[..., 2]

  @property
  def max_mean_square(self) -> jax.Array:
    """Its decayed running maximum, the default direction's normaliser."""
    return self.statistics[..., 3]

  @property
  def weight_averages(self) -> jax.Array:
    """``(W1, W2, U1, U2)``: EMAs of ``w``, ``w^2``, ``1`` and ``1`` at the decays ``(b1, b2,
    b1, b2)`` over the finite updates (``weighted_direction``); zeros otherwise."""
    return self.statistics[..., 4:8]


def _statistics(initial_distance, numerator, mean_square, max_mean_square, weight_averages):
  """:attr:`ScaleByDistanceState.statistics` from its parts."""
  scalars = jnp.stack([initial_distance, numerator, mean_square, max_mean_square], axis=-1)
  return jnp.concatenate([scalars, weight_averages], axis=-1)


# The initial estimate and its cap relative to the params' rms, where the user gives none.
DEFAULT_INITIAL_LEARNING_RATE = 1e-6
DEFAULT_MAX_RELATIVE_STEP = 0.1
# The estimate's sums read about one coordinate in 16 of each large leaf (every 17th slice):
# its two buffers hold about 1/8 of the params between them.
DEFAULT_SUBSAMPLE = 16

# What a number passed positionally would be mistaken for.
KEYWORD_ONLY_HINT = (
  "The rate tunes itself: initial_learning_rate= is the estimate it starts from (any small "
  "value), learning_rate= a factor on the tuned rate (default 1.0), as in Prodigy."
)


@validation.keyword_only(KEYWORD_ONLY_HINT)
def scale_by_distance(
  *,
  learning_rate: optax.ScalarOrSchedule = 1.0,
  initial_learning_rate: Optional[float] = None,
  direction: Optional[optax.GradientTransformation] = None,
  decay: float = 0.9995,
  step_scale: float = 1.0,
  max_relative_step: Optional[float] = None,
  rms_decay: float = 0.999,
  max_rms_decay: float = 0.998,
  eps: float = 1e-8,
  plateau: Optional[optax.GradientTransformation] = None,
  weighted_direction: Optional[tuple[jax.typing.ArrayLike, jax.typing.ArrayLike]] = None,
  subsample: Optional[int] = None,
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

  ``init`` caps the initial guess: ``d_0 = min(initial_learning_rate, max_relative_step *
  max(rms(x_0), 1e-3))`` (``rms`` the root mean square of the params), so a too large guess
  (which the growing estimate could never undo) is cut to a step of a tenth of the typical
  parameter size; a small one grows by the estimate within tens of steps.

  Subsample. The estimate needs two global sums per step, ``<g_k, x_0 - x_k>`` and ``||s_k||_1``.
  They are taken over a fixed subsample of about one coordinate in ``subsample`` of each leaf of
  at least 65,536 elements (every ``p``-th slice along its leading long axis, ``p`` the smallest
  prime not below ``subsample``; smaller leaves whole), each leaf's part scaled by its size over
  its sample's: ``x_0`` and ``s`` are kept only there (about ``2 / subsample`` parameter-sized
  buffers on a large model) and the sums read that much of the params. Both sums estimate the
  full ones; their ratio, the estimate, is the one the sampled coordinates see.
  ``subsample=1`` is the full estimate.

  ``learning_rate`` multiplies the step, not the estimate: a factor on the tuned rate (1 by
  default; a schedule of the update count for a warm-up or a decay on top of it, as with
  Prodigy's learning rate).

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
  underestimates, several times too large a step. With a
  constant ``d``, ``c_k = 1`` and the direction is exactly Adam's; its ``eps`` acts on the
  weighted moments. The weight is bounded by ``finfo(dtype).max ** 0.25`` (the narrowest float
  dtype of the gradients) so that a ``float16`` second moment cannot overflow.

  Args:
    learning_rate: a factor on the tuned rate (a float ``>= 0`` or an optax schedule of the
      update count); ``1`` for the rate as estimated.
    initial_learning_rate: the initial estimate ``d_0`` (any value from ``1e-8`` up: too small
      grows, too large is capped by ``max_relative_step``); ``None`` for ``1e-6``. Read once, by
      ``init``.

    direction: an optax transformation giving the step direction from the gradient (its output
      is scaled by ``-step_scale * d_k``), or ``None`` for ``g / sqrt(EMA mean(g^2))``.
    decay: ``beta`` in ``(0, 1]``, the forgetting of old terms of ``r`` and ``s``.
    step_scale: ``sigma > 0``, multiplies the step (not the estimate).
    max_relative_step: the cap of the initial guess, relative to the params' rms; ``None`` for
      ``0.1``, ``math.inf`` for no cap. Read once, by ``init``.
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
    subsample: the estimate's sums read about one coordinate in ``subsample`` of each large
      leaf (``>= 1``; see above); ``None`` for 16, ``1`` for every coordinate. It sizes state
      arrays: under ``optax.inject_hyperparams`` name it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; the state's ``learning_rate`` is the rate the
    next update applies to the direction (``learning_rate * step_scale * d`` times the plateau
    factor), ``distance`` is ``d``.

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
  validation.check_range("learning_rate", learning_rate, low=0.0)
  validation.check_range(
    "initial_learning_rate", initial_learning_rate, low=0.0, low_inclusive=False, allow_none=True
  )
  validation.check_range("decay", decay, low=0.0, high=1.0, low_inclusive=False)
  validation.check_range("step_scale", step_scale, low=0.0, low_inclusive=False)
  if not _is_inf(max_relative_step):
    validation.check_range(
      "max_relative_step", max_relative_step, low=0.0, low_inclusive=False, allow_none=True
    )
  validation.check_range("rms_decay", rms_decay, low=0.0, high=1.0, high_inclusive=False)
  validation.check_range("max_rms_decay", max_rms_decay, low=0.0, high=1.0)
  validation.check_range("eps", eps, low=0.0)
  validation.check_transformation(
    "direction", direction, example="optax.scale_by_adam()", allow_none=True
  )
  annealing.check_plateau(plateau)
  if weighted_direction is not None:
    if direction is None:
      raise ValueError("weighted_direction needs a direction (it weights the direction's moments).")
    if len(weighted_direction) != 2:
      raise ValueError(f"weighted_direction must be (b1, b2), got {weighted_direction!r}.")
    for name, b in zip(("weighted_direction[0]", "weighted_direction[1]"), weighted_direction):
      validation.check_range(name, b, low=0.0, high=1.0, high_inclusive=False)
  if direction is not None:
    direction = optax.with_extra_args_support(direction)
  initial_learning_rate = (
    DEFAULT_INITIAL_LEARNING_RATE if initial_learning_rate is None else initial_learning_rate
  )
  max_relative_step = DEFAULT_MAX_RELATIVE_STEP if max_relative_step is None else max_relative_step
  validation.check_static("subsample", subsample)
  validation.check_int("subsample", subsample, low=1)
  subsample_ = DEFAULT_SUBSAMPLE if subsample is None else int(subsample)
  # A unit factor (the default) is left out of the arithmetic altogether.
  unit_factor = (
    not callable(learning_rate)
    and isinstance(learning_rate, (int, float))
    and (learning_rate == 1.0)
  )

  def factor(count):
    """``learning_rate`` at update ``count`` (a schedule is called with it)."""
    return learning_rate(count) if callable(learning_rate) else learning_rate

  def times_factor(rate, count):
    return rate if unit_factor else rate * jnp.asarray(factor(count)).astype(rate.dtype)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    d0 = jnp.asarray(initial_learning_rate, dtype)
    if not _is_inf(max_relative_step):
      # The cap, read from x_0 (the params the estimate measures from).
      size = max(optax.tree.size(params), 1)
      acc = jnp.promote_types(dtype, jnp.float32)
      rms_params = numerics.norm(params, acc) / jnp.sqrt(jnp.asarray(size, acc))
      cap = (max_relative_step * jnp.maximum(rms_params, 1e-3)).astype(dtype)
      d0 = jnp.minimum(d0, cap)
    return ScaleByDistanceState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=times_factor((step_scale * d0).astype(dtype), jnp.zeros((), jnp.int32)),
      distance=d0,
      statistics=_statistics(
        d0, *(jnp.zeros((), dtype) for _ in range(3)), weight_averages=jnp.zeros((4,), dtype)
      ),
      # A copy, not the caller's arrays, so the state can be donated with the params.
      initial_params=jax.tree.map(
        lambda p: jnp.array(p, copy=True), sampling.sample(params, subsample_)
      ),
      grad_sum=optax.tree.zeros_like(sampling.sample(params, subsample_)),
      direction=direction.init(params) if direction is not None else (),
      plateau_scale=jnp.ones((), dtype),
      plateau=plateau.init(jnp.ones((), dtype)) if plateau is not None else (),
    )

  def normalised_gradient(updates, grad_sq, finite, state, dtype):
    """The default direction ``g / (sqrt(n_k) + eps)`` and the new ``(v_k, n_k)``."""
    mean_square = grad_sq / max(optax.tree.size(updates), 1)
    v = rms_decay * state.mean_square + (1.0 - rms_decay) * mean_square.astype(dtype)
    bias = 1.0 - rms_decay ** jnp.asarray(optax.safe_increment(state.count)).astype(dtype)
    vmax = jnp.maximum(v / bias, max_rms_decay * state.max_mean_square)
    inv = 1.0 / (jnp.sqrt(vmax) + eps)
    v = jnp.where(finite, v, state.mean_square)
    vmax = jnp.where(finite, vmax, state.max_mean_square)
    return numerics.scale(inv, updates), v, vmax

  def weighted_moments(updates, finite, state, acc):
    """The direction's input ``w_k g_k``, the new weight averages and the factor ``c_k``."""
    d = state.distance
    # w_k = d_k / d_0, bounded so that (w g)^2 stays finite.
    w = jnp.minimum(numerics.safe_div(d, state.initial_distance, 1.0), _max_weight(updates))
    b1, b2 = (jnp.asarray(b, acc) for b in typing.cast(tuple, weighted_direction))
    decays = jnp.stack([b1, b2, b1, b2])
    terms = jnp.stack([w, w * w, jnp.ones_like(w), jnp.ones_like(w)])
    new_averages = decays * state.weight_averages + (1.0 - decays) * terms
    w1, w2, u1, u2 = new_averages[0], new_averages[1], new_averages[2], new_averages[3]
    dir_scale = numerics.safe_div(u1, w1, 1.0) * jnp.sqrt(numerics.safe_div(w2, u2, 1.0))
    averages = jnp.where(finite, new_averages, state.weight_averages)
    return numerics.scale(w, updates), averages, dir_scale

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    validation.require_params(params, "scale_by_distance", "its estimate reads x_0 - x_k")
    dtype = state.distance.dtype
    acc = jnp.promote_types(dtype, jnp.float32)
    d = state.distance
    lam = d * d
    # The global sums this step needs: sum g^2 (the default direction's mean square; finite iff
    # every g is), the estimate's <g, x_0 - x> and ||s_new||_1 = ||decay s + lam g||_1 (lam from
    # this step's d: a new d reaches the next step), written as decay ||s + (lam / decay) g||_1
    # so that it shares no subexpression with the state's s_new (a shared one is materialized).
    # All three on the subsample (sampled_grad), each leaf's part scaled to estimate the full
    # sum; sum g^2 then estimates the mean square and flags a non-finite sampled gradient (the
    # whole step's guard is stop_when's).
    sampled_grad = sampling.sample(updates, subsample_)
    grad_sq, numerator_term, l1 = numerics.sums(
      lambda g, p0, p, s_: (g * g, g * (p0 - p), jnp.abs(s_ + (lam / decay).astype(acc) * g)),
      sampled_grad,
      state.initial_params,
      sampling.sample(params, subsample_),
      state.grad_sum,
      dtype=acc,
      leaf_weights=None if subsample_ == 1 else sampling.weights(updates, subsample_),
    )
    l1 = decay * l1
    finite = jnp.isfinite(grad_sq)
    averages, dir_scale = state.weight_averages, 1.0
    if direction is None:
      dir_updates, v, vmax = normalised_gradient(updates, grad_sq, finite, state, dtype)
      dir_state = ()
    else:
      dir_in = updates
      if weighted_direction is not None:
        dir_in, averages, dir_scale = weighted_moments(updates, finite, state, acc)
      dir_updates, dir_state = direction.update(
        dir_in, state.direction, params, value=value, **extra_args
      )
      dir_state = optax.tree.where(finite, dir_state, state.direction)
      v, vmax = state.mean_square, state.max_mean_square
    scale, plateau_state = annealing.feed_plateau(
      plateau, state.plateau, state.plateau_scale, value, finite, dtype
    )
    rate = times_factor(step_scale * d * scale * dir_scale, state.count)
    new_updates = jax.tree.map(
      lambda a, g: (-rate * a.astype(acc)).astype(g.dtype), dir_updates, updates
    )

    numerator = decay * state.numerator + lam * numerator_term.astype(dtype)
    grad_sum = jax.tree.map(
      lambda s_, g: (decay * s_ + lam * g).astype(s_.dtype), state.grad_sum, sampled_grad
    )
    estimate = numerics.safe_div(numerator, l1.astype(dtype))
    new_d = jnp.where(finite, jnp.maximum(d, estimate), d)
    count = jnp.asarray(optax.safe_increment(state.count))
    new_state = ScaleByDistanceState(
      count=count,
      learning_rate=times_factor((step_scale * new_d * scale).astype(dtype), count),
      distance=new_d.astype(dtype),
      statistics=_statistics(
        state.initial_distance,
        jnp.where(finite, numerator, state.numerator).astype(dtype),
        v.astype(dtype),
        vmax.astype(dtype),
        averages.astype(dtype),
      ),
      initial_params=state.initial_params,
      grad_sum=optax.tree.where(finite, grad_sum, state.grad_sum),
      direction=dir_state,
      plateau_scale=scale.astype(dtype),
      plateau=plateau_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
