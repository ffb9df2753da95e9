"""The hypergradient learning rate (Baydin et al. 2018): an experiment, not recommended."""

from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import annealing
from nag_optax._src import numerics
from nag_optax._src import validation


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

  An experiment, kept for study: over long minibatch runs this rule shrinks the rate to its
  lower bound: once noise dominates, ``c_t`` is negative on average (the short-horizon bias of
  greedy learning-rate adaptation, Wu et al. 2018), so the rate decays geometrically and
  training freezes. It suits short runs and deterministic problems; for whole training runs use
  :func:`nag_optax.scale_by_distance` (what :func:`nag_optax.auto_nag_sgd` and
  :func:`nag_optax.auto_nadamw` are built on).

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
    >>> from nag_optax import contrib
    >>> tx = optax.chain(contrib.scale_by_hypergradient(1e-4), nag_optax.nesterov(0.9))
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
  validation.check_range("warmup_growth", warmup_growth, low=1.0, allow_none=True)
  validation.check_range(
    "max_relative_step", max_relative_step, low=0.0, low_inclusive=False, allow_none=True
  )
  if not isinstance(learning_rate_bounds, (tuple, list)) or len(learning_rate_bounds) != 2:
    raise ValueError(
      f"learning_rate_bounds must be a pair (lower, upper), got {learning_rate_bounds!r}."
    )
  lower, upper = learning_rate_bounds
  validation.check_range("learning_rate_bounds[0]", lower, low=0.0, low_inclusive=False)
  validation.check_range("learning_rate_bounds[1]", upper, low=lower, low_inclusive=False)
  annealing.check_plateau(plateau)

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
    validation.require_params(
      params, "scale_by_hypergradient", "the applied step it adapts to is their difference"
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
    step = optax.tree.sub(params, state.prev_params)
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
    new_scale, plateau_state = annealing.feed_plateau(
      plateau, state.plateau, scale, value, finite, dtype
    )
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
