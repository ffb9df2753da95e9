"""Step sizes without a known Lipschitz constant: curvature (secant) estimates and backtracking.

Each transformation emits ``u = -step * g`` and goes *before* :func:`nesterov` in a chain.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation


ESTIMATES = ("secant", "cocoercive")


class ScaleByCurvatureState(NamedTuple):
  """State of :func:`scale_by_curvature`."""
  count: jax.Array  # int32: updates taken.
  learning_rate: jax.Array  # the step used at the latest update.
  curvature: jax.Array  # running estimate of L (max of decayed secant estimates); 0 before any.
  peak_curvature: jax.Array  # the largest two-point estimate seen; L_k never exceeds it.
  function_evals: jax.Array  # int32: value_fn evaluations so far (first-step backtracking only).
  prev_params: Any  # the point of the previous gradient.
  prev_grad: Any  # the previous gradient.


def _secant_curvature(params, prev_params, grad, prev_grad, dtype, estimate="secant"):
  """A curvature estimate from two points and their gradients that never exceeds L.

  ``"secant"``: ``||g_k - g_{k-1}|| / ||y_k - y_{k-1}||``. ``"cocoercive"``:
  ``||g_k - g_{k-1}||^2 / <g_k - g_{k-1}, y_k - y_{k-1}>``, which is at least the secant
  (Cauchy-Schwarz) and at most L for a convex function with L-Lipschitz gradient (co-coercivity,
  ``<dg, dy> >= ||dg||^2 / L``); where ``<dg, dy> <= 0`` (no convexity along the segment) it falls
  back to the secant. 0 where the points coincide or the estimate is not finite.
  """
  dy = jax.tree.map(lambda a, b: a - b, params, prev_params)
  dg = jax.tree.map(lambda a, b: a - b, grad, prev_grad)
  ds = numerics.norm(dy, dtype)
  dgn = numerics.norm(dg, dtype)
  est = dgn / jnp.where(ds > 0, ds, 1.0)
  if estimate == "cocoercive":
    inner = numerics.vdot(dg, dy, dtype)
    cocoercive = jnp.square(dgn) / jnp.where(inner > 0, inner, 1.0)
    est = jnp.where(inner > 0, jnp.maximum(est, cocoercive), est)
  return jnp.where((ds > 0) & jnp.isfinite(est), est, 0.0)


def _initial_step(initial_step, params, grad, dtype):
  """The first step: the user's guess, or a probe of relative length 1e-4 along -g."""
  if initial_step is not None:
    return jnp.asarray(initial_step, dtype)
  gnorm = numerics.norm(grad, dtype)
  pnorm = numerics.norm(params, dtype)
  probe = 1e-4 * jnp.maximum(pnorm, 1.0) / jnp.where(gnorm > 0, gnorm, 1.0)
  return probe.astype(dtype)


def scale_by_curvature(
    initial_step: Optional[float] = None,
    *,
    safety: float = 1.0,
    decay: float = 1.0,
    estimate: str = "secant",
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
    >>> print(float(optax.tree.get(state, "learning_rate")))
    0.005

  References:
    Malitsky & Mishchenko, `Adaptive gradient descent without descent
    <https://arxiv.org/abs/1910.09529>`_, ICML 2020.
    Barzilai & Borwein, Two-point step size gradient methods, IMA J. Numer. Anal. 1988.
  """
  validation.check_range("initial_step", initial_step if initial_step is not None else 1.0,
                         low=0.0, low_inclusive=False)
  validation.check_range("safety", safety, low=0.0, high=2.0, low_inclusive=False)
  validation.check_range("decay", decay, low=0.0, high=1.0, low_inclusive=False)
  validation.check_choice("estimate", estimate, ESTIMATES)
  validation.check_int("max_backtracking_steps", max_backtracking_steps, low=1, allow_none=False)

  def init_fn(params):
    dtype = numerics.scalar_dtype(params)
    return ScaleByCurvatureState(
        count=jnp.zeros((), jnp.int32),
        learning_rate=jnp.zeros((), dtype),
        curvature=jnp.zeros((), dtype),
        peak_curvature=jnp.zeros((), dtype),
        function_evals=jnp.zeros((), jnp.int32),
        prev_params=optax.tree.zeros_like(params),
        prev_grad=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("scale_by_curvature needs params (the point where the gradient was taken).")
    dtype = state.learning_rate.dtype
    first = state.count == 0
    secant = _secant_curvature(params, state.prev_params, updates, state.prev_grad, dtype,
                               estimate)
    peak = jnp.maximum(state.peak_curvature, secant)
    # Forget only while the last move went downhill; after an uphill move (the new gradient
    # points back along it) undo one forgetting, up to the largest estimate seen.
    moved = jax.tree.map(lambda a, b: a - b, params, state.prev_params)
    uphill = numerics.vdot(updates, moved, dtype) > 0
    base = jnp.where(uphill, jnp.minimum(state.curvature / decay, peak), decay * state.curvature)
    curvature = jnp.where(first, 0.0, jnp.maximum(base, secant))
    step = jnp.where(curvature > 0, safety / jnp.where(curvature > 0, curvature, 1.0),
                     jnp.where(first, _initial_step(initial_step, params, updates, dtype),
                               state.learning_rate))
    accepted, evals = jnp.asarray(True), jnp.zeros((), jnp.int32)
    if backtrack_first_step and value is not None and value_fn is not None:
      step, accepted, evals = _backtrack(
          value_fn, params, updates, value, step, decrease_factor=0.5, sufficient_decrease=0.5,
          max_steps=max_backtracking_steps, dtype=dtype, active=first)
    new_updates = numerics.scale(jnp.where(accepted, -step, 0.0), updates)
    new_state = ScaleByCurvatureState(
        count=optax.safe_increment(state.count), learning_rate=step.astype(dtype),
        curvature=curvature.astype(dtype), peak_curvature=jnp.where(first, 0.0, peak).astype(dtype),
        function_evals=state.function_evals + evals,
        prev_params=params,
        prev_grad=jax.tree.map(lambda g, p: g.astype(p.dtype), updates, state.prev_grad))
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _backtrack(value_fn, params, grad, value, step, *, decrease_factor, sufficient_decrease,
               max_steps, dtype, active=True):
  """Shrink ``step`` until f(y - step g) <= f(y) - c step ||g||^2, in a bounded while_loop.

  Returns ``(accepted_step, accepted, evaluations)``. A non-finite trial value is a rejection,
  and so is one that does not lower f measurably,
  so a loss that returns inf or NaN only shrinks the step. When no trial is accepted within
  ``max_steps`` evaluations, ``accepted`` is False and the last (smallest) step is returned.
  With ``active`` False nothing is evaluated and ``step`` is returned as accepted.
  """
  f0 = jnp.asarray(value).astype(dtype)
  gnorm2 = jnp.square(numerics.norm(grad, dtype))

  def trial_ok(eta):
    trial = jax.tree.map(lambda p, g: p - eta.astype(p.dtype) * g.astype(p.dtype), params, grad)
    f = jnp.asarray(value_fn(trial)).astype(dtype)
    # False for NaN and inf. A trial that leaves f unchanged (the decrease is below the float
    # resolution of f) is rejected too: accepting it would let the step grow without bound.
    sufficient = f <= f0 - sufficient_decrease * eta * gnorm2
    return sufficient & ((f < f0) | (gnorm2 == 0))

  def cond(carry):
    _, accepted, evals = carry
    return ~accepted & (evals < max_steps)

  def body(carry):
    eta, _, evals = carry
    ok = trial_ok(eta)
    return jnp.where(ok, eta, eta * decrease_factor), ok, evals + 1

  eta, accepted, evals = jax.lax.while_loop(
      cond, body, (jnp.asarray(step, dtype), ~jnp.asarray(active), jnp.zeros((), jnp.int32)))
  return eta, accepted, evals


class ScaleByBacktrackingState(NamedTuple):
  """State of :func:`scale_by_backtracking`."""
  count: jax.Array  # int32: updates taken.
  learning_rate: jax.Array  # the step accepted at the latest update (next guess: x increase).
  function_evals: jax.Array  # int32: value_fn evaluations so far.
  num_backtracking_steps: jax.Array  # int32: value_fn evaluations at the latest update.


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
  validation.check_range("initial_step", initial_step if initial_step is not None else 1.0,
                         low=0.0, low_inclusive=False)
  validation.check_range("increase_factor", increase_factor, low=1.0)
  validation.check_range("decrease_factor", decrease_factor, low=0.0, high=1.0,
                         low_inclusive=False, high_inclusive=False)
  validation.check_range("sufficient_decrease", sufficient_decrease, low=0.0, high=1.0,
                         low_inclusive=False, high_inclusive=False)
  validation.check_int("max_backtracking_steps", max_backtracking_steps, low=1, allow_none=False)

  def init_fn(params):
    dtype = numerics.scalar_dtype(params)
    izero = jnp.zeros((), jnp.int32)
    return ScaleByBacktrackingState(count=izero, learning_rate=jnp.zeros((), dtype),
                                    function_evals=izero, num_backtracking_steps=izero)

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    del extra_args
    dtype = state.learning_rate.dtype
    if params is None:
      raise ValueError("scale_by_backtracking needs params (the point of the gradient).")
    # No growth at a zero gradient: every trial would be accepted there and the step would
    # double without bound while the iterate stands still.
    grows = numerics.norm(updates, dtype) > 0
    guess = jnp.where(state.count > 0,
                      state.learning_rate * jnp.where(grows, increase_factor, 1.0),
                      _initial_step(initial_step, params, updates, dtype))
    if value is None or value_fn is None:
      step = jnp.where(state.count > 0, state.learning_rate, guess)
      accepted, evals = jnp.asarray(True), jnp.zeros((), jnp.int32)
    else:
      step, accepted, evals = _backtrack(
          value_fn, params, updates, value, guess, decrease_factor=decrease_factor,
          sufficient_decrease=sufficient_decrease, max_steps=max_backtracking_steps, dtype=dtype)
    new_updates = numerics.scale(jnp.where(accepted, -step, 0.0), updates)
    new_state = ScaleByBacktrackingState(
        count=optax.safe_increment(state.count), learning_rate=step.astype(dtype),
        function_evals=state.function_evals + evals, num_backtracking_steps=evals)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByHypergradientState(NamedTuple):
  """State of :func:`scale_by_hypergradient`."""
  count: jax.Array  # int32: updates taken.
  learning_rate: jax.Array  # the adapted rate over all leaves, ||eta g|| / ||g|| (cap excluded).
  hypergradient: jax.Array  # the latest cosine c_t between -g_t and the previous applied step.
  plateau_scale: jax.Array  # product of the plateau decays so far (1 without `plateau`).
  leaf_learning_rates: Any  # one rate per leaf of params (all equal unless per_leaf).
  warming_up: Any  # per leaf, bool: still in the initial doubling phase.
  prev_params: Any  # the params of the previous update (their difference is the applied step).
  plateau: Any  # the state of the `plateau` transformation (() without it).


def _leaf_sums(a, b, dtype):
  """Per leaf: (<a, b>, ||a||^2, ||b||^2), in tree-leaf order.

  Elementwise products and full reductions (no reshape), so sharded leaves reduce across
  devices without being gathered.
  """
  dots, aa, bb = [], [], []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = x.astype(dtype), y.astype(dtype)
    dots.append(jnp.sum(x * y))
    aa.append(jnp.sum(x * x))
    bb.append(jnp.sum(y * y))
  return dots, aa, bb


def _cos(dot, aa, bb):
  """dot / sqrt(aa bb) clipped to [-1, 1], or 0 where either norm is zero or it is not finite."""
  denom = jnp.sqrt(aa) * jnp.sqrt(bb)
  cos = dot / jnp.where(denom > 0, denom, 1.0)
  return jnp.where((denom > 0) & jnp.isfinite(cos), jnp.clip(cos, -1.0, 1.0), 0.0)


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

  Safeguards (each measured on digits MLP/CNN training, ``benchmarks/minibatch.py``):

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
    (``c_t = 0``); the state never holds a non-finite rate. Pair with :func:`stop_when` (as
    :func:`auto_nag_sgd` does) so the update itself is skipped.

  ``per_leaf=True`` keeps one rate per leaf of ``params`` (per layer weight and bias, as Baydin
  et al.'s per-parameter-group variant and LARS do), each adapted from its own cosine: a layer
  that overshoots shrinks its own rate without dragging the others down. On the digits CNN this
  measured faster and more robust than one global rate (``benchmarks/RESULTS.md``); the warm-up
  is per leaf too, and the relative step cap stays global (it scales every leaf's rate by the
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
    clip (the rate itself without ``per_leaf``), read by ``optax.tree.get`` and by ``stop_when(min_learning_rate=...)``, and
    ``leaf_learning_rates``. It needs ``params``.

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
  validation.check_range("hypergradient_rate", hypergradient_rate, low=0.0, high=1.0,
                         high_inclusive=False)
  if warmup_growth is not None:
    validation.check_range("warmup_growth", warmup_growth, low=1.0)
  if max_relative_step is not None:
    validation.check_range("max_relative_step", max_relative_step, low=0.0, low_inclusive=False)
  if not isinstance(learning_rate_bounds, (tuple, list)) or len(learning_rate_bounds) != 2:
    raise ValueError("learning_rate_bounds must be a pair (lower, upper), got "
                     f"{learning_rate_bounds!r}.")
  lower, upper = learning_rate_bounds
  validation.check_range("learning_rate_bounds[0]", lower, low=0.0, low_inclusive=False)
  validation.check_range("learning_rate_bounds[1]", upper, low=lower, low_inclusive=False)
  if plateau is not None and not isinstance(plateau, optax.GradientTransformation):
    raise TypeError("plateau must be an optax transformation (e.g. "
                    f"optax.contrib.reduce_on_plateau()), got {type(plateau).__name__}.")

  def init_fn(params):
    dtype = numerics.scalar_dtype(params)
    rate = jnp.clip(jnp.asarray(learning_rate, dtype), lower, upper)
    return ScaleByHypergradientState(
        count=jnp.zeros((), jnp.int32), learning_rate=rate,
        hypergradient=jnp.zeros((), dtype), plateau_scale=jnp.ones((), dtype),
        leaf_learning_rates=jax.tree.map(lambda _: rate, params),
        warming_up=jax.tree.map(lambda _: jnp.asarray(warmup_growth is not None), params),
        # Read only from the second update on (after it holds the previous params); fresh zeros,
        # not the caller's arrays, so a state built by init can be donated with the params.
        prev_params=optax.tree.zeros_like(params),
        plateau=plateau.init(jnp.ones((), dtype)) if plateau is not None else ())

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("scale_by_hypergradient needs params: the applied step it adapts to is "
                       "the difference of successive params.")
    dtype = state.learning_rate.dtype
    treedef = jax.tree.structure(updates)
    rates = jax.tree.leaves(state.leaf_learning_rates)
    warming = jax.tree.leaves(state.warming_up)
    finite = numerics.all_finite(updates)
    # Everything below reads gs = g / max|g| (two multiplications by 1/sqrt(max|g|), whose
    # reciprocal stays a normal float), so no norm overflows for huge finite gradients; the
    # cosines and the cap are scale-free in g.
    gmax = jnp.max(jnp.stack([jnp.max(jnp.abs(g)).astype(dtype)
                              for g in jax.tree.leaves(updates)]))
    gmax = jnp.where(finite & (gmax > 0), gmax, 1.0)
    rsq = jax.lax.rsqrt(gmax)
    scaled = jax.tree.map(lambda g: g.astype(dtype) * rsq * rsq, updates)
    step = jax.tree.map(lambda p, q: p - q, params, state.prev_params)
    dots, gg, dd = _leaf_sums(scaled, step, dtype)
    use = finite & (state.count > 0)
    global_cos = jnp.where(use, -_cos(sum(dots), sum(gg), sum(dd)), 0.0)
    if per_leaf:
      cosines = [jnp.where(use, -_cos(*t), 0.0) for t in zip(dots, gg, dd)]
    else:
      cosines = [global_cos] * len(rates)

    # The first update has no previous step (c = 0); the warm-up ends at the first c <= 0 after.
    warming = [w & ((c > 0) | (state.count < 1)) for w, c in zip(warming, cosines)]
    new_rates = [eta * (1.0 + hypergradient_rate * c) for eta, c in zip(rates, cosines)]
    if warmup_growth is not None:
      new_rates = [jnp.where(w & (c > 0), eta * warmup_growth, new)
                   for w, c, eta, new in zip(warming, cosines, rates, new_rates)]

    scale, plateau_state = state.plateau_scale, state.plateau
    if plateau is not None and value is not None:
      unit, new_plateau_state = plateau.update(jnp.ones((), dtype), state.plateau, value=value)
      feed = finite & jnp.isfinite(jnp.asarray(value))  # a NaN loss never reaches the plateau
      plateau_state = optax.tree.where(feed, new_plateau_state, state.plateau)
      new_scale = jnp.where(feed, jnp.asarray(unit, dtype), scale)
      ratio = jnp.where(scale > 0, new_scale / jnp.where(scale > 0, scale, 1.0), 1.0)
      new_rates = [eta * ratio for eta in new_rates]
      scale = new_scale
    high = jnp.maximum(upper * scale, lower)
    new_rates = [jnp.clip(eta, lower, high) for eta in new_rates]
    # A non-finite gradient leaves every rate as it was.
    new_rates = [jnp.where(finite, new, old) for new, old in zip(new_rates, rates)]

    # The cap applies to the emitted step: ||u|| <= rho ||x||. With ||u|| = gmax * s and
    # s = ||eta gs||, the step is u = -(eta k) gs with k = min(gmax, rho ||x|| / s): k = gmax
    # is the plain u = -eta g. The capped rate is stored at the first update and during the
    # warm-up (it tames a wild initial guess and stops the doubling); later the stored rate
    # follows the cap down by at most a factor 2 per step, so one outlier minibatch does not
    # collapse it while a cap that keeps binding still brings it down within a few steps.
    step_norm = lambda rates: jnp.sqrt(sum(jnp.square(eta) * g2 for eta, g2 in zip(rates, gg)))
    s_norm = step_norm(new_rates)
    gnorm_scaled = jnp.sqrt(sum(gg))
    if max_relative_step is not None:
      pnorm = jnp.maximum(numerics.norm(params, dtype), 1e-3)
      k = jnp.minimum(gmax, max_relative_step * pnorm / jnp.where(s_norm > 0, s_norm, 1.0))
      k = jnp.where(finite, k, gmax)
      multipliers = [eta * k for eta in new_rates]
      emitted = [eta * (k / gmax) for eta in new_rates]  # may underflow only for |g| ~ 1e38
      new_rates = [jnp.maximum(jnp.where((state.count < 1) | w, e, jnp.maximum(e, 0.5 * eta)),
                               lower)
                   for w, e, eta in zip(warming, emitted, new_rates)]
      new_updates = jax.tree.map(lambda m, gs, g: (-m * gs).astype(g.dtype),
                                 jax.tree.unflatten(treedef, multipliers), scaled, updates)
      s_norm = step_norm(new_rates)
    else:
      new_updates = jax.tree.map(lambda eta, g: (-eta * g.astype(dtype)).astype(g.dtype),
                                 jax.tree.unflatten(treedef, new_rates), updates)
    # The adapted (stored) rate over all leaves, ||eta g|| / ||g||: the rate itself without
    # per_leaf. A one-step clip by the cap is not a decayed rate, so it is not reported here.
    effective_now = s_norm / jnp.where(gnorm_scaled > 0, gnorm_scaled, 1.0)
    effective = jnp.where(finite & (gnorm_scaled > 0), effective_now, state.learning_rate)

    new_state = ScaleByHypergradientState(
        count=optax.safe_increment(state.count), learning_rate=effective.astype(dtype),
        hypergradient=global_cos.astype(dtype), plateau_scale=scale.astype(dtype),
        leaf_learning_rates=jax.tree.unflatten(treedef, [e.astype(dtype) for e in new_rates]),
        warming_up=jax.tree.unflatten(treedef, warming), prev_params=params,
        plateau=plateau_state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
