"""Optimizers built as chains of the package's blocks."""

import functools
from typing import Literal
from typing import Optional
from typing import Union

import jax
import optax

from nag_optax._src import annealing
from nag_optax._src import averaging
from nag_optax._src import distance
from nag_optax._src import factored as factored_lib
from nag_optax._src import hybrid
from nag_optax._src import momentum as momentum_lib
from nag_optax._src import spectral
from nag_optax._src import step_size
from nag_optax._src import stopping
from nag_optax._src import validation


def nag(
  learning_rate: optax.ScalarOrSchedule,
  momentum: optax.ScalarOrSchedule = 0.9,
  *,
  schedule: Literal["constant", "convex", "strongly_convex", "adaptive"] = "constant",
  condition_number: Optional[jax.typing.ArrayLike] = None,
  restart: Optional[Literal["gradient", "speed", "function"]] = None,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
  min_restart_interval: int = 10,
) -> optax.GradientTransformationExtraArgs:
  r"""Nesterov-accelerated SGD: a drop-in for ``optax.sgd(learning_rate, momentum, nesterov=True)``.

  The chain ``optax.scale_by_learning_rate(learning_rate)`` then :func:`nesterov`: with
  ``u_k = -eta_k g_k``,

  .. math::

    m_{k+1} = b_{k-1} m_k + u_k, \qquad \Delta y_k = u_k + b_k m_{k+1}.

  With the defaults (a constant learning rate and momentum) the iterates are identical to
  ``optax.sgd(learning_rate, momentum, nesterov=True)`` and to PyTorch's
  ``SGD(lr, momentum, nesterov=True, dampening=0)``. When the learning rate is a schedule the
  step is applied *inside* the momentum buffer, the correct form for a step that changes from
  iteration to iteration (optax scales the buffer after accumulation instead).

  Args:
    learning_rate: a non-negative float or an optax schedule of the step count.
    momentum: momentum in ``[0, 1)`` or a schedule; used by ``schedule="constant"``.
    schedule: ``"constant"``, ``"convex"``, ``"strongly_convex"`` or ``"adaptive"`` (see
      :func:`nesterov`).
    condition_number: ``L / mu``, for ``schedule="strongly_convex"``; the initial estimate for
      ``"adaptive"``.
    restart: ``None``, ``"gradient"``, ``"speed"`` or ``"function"`` (see :func:`nesterov`).
    accumulator_dtype: dtype of the momentum buffer.
    min_restart_interval: minimum steps between speed restarts, and the shortest run that
      ``schedule="adaptive"`` measures.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
    >>> tx = nag_optax.nag(learning_rate=0.1)
    >>> x = jnp.zeros(3)
    >>> state = tx.init(x)
    >>> for _ in range(50):
    ...   updates, state = tx.update(jax.grad(f)(x), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 4))
    [1. 1. 1.]

  References:
    Sutskever et al., `On the importance of initialization and momentum in deep learning
    <https://proceedings.mlr.press/v28/sutskever13.html>`_, 2013.
  """
  validation.check_range("learning_rate", learning_rate, low=0.0)
  return optax.chain(
    optax.scale_by_learning_rate(learning_rate),
    momentum_lib.nesterov(
      momentum,
      schedule=schedule,
      condition_number=condition_number,
      restart=restart,
      accumulator_dtype=accumulator_dtype,
      min_restart_interval=min_restart_interval,
    ),
  )


def auto_nag(
  *,
  method: Literal["auto", "nesterov", "spectral"] = "auto",
  initial_step: Optional[float] = None,
  safety: float = 1.0,
  decay: float = 0.9,
  estimate: Literal["secant", "cocoercive"] = "cocoercive",
  schedule: Literal["constant", "convex", "strongly_convex", "adaptive"] = "adaptive",
  restart: Optional[Literal["gradient", "speed", "function"]] = "gradient",
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
  gtol: Optional[float] = None,
  rtol: Optional[float] = stopping.DEFAULT_RTOL,
  ftol: Optional[float] = None,
  xtol: Optional[float] = None,
  max_steps: Optional[int] = None,
  patience: Optional[int] = None,
  min_learning_rate: Optional[float] = None,
  max_nonfinite: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""Tuning-free accelerated gradient descent for full-batch (deterministic) problems.

  Three methods, all wrapped in :func:`stop_when`:

  * ``method="nesterov"``: ``chain(scale_by_curvature(decay=0.9, estimate="cocoercive"),
    nesterov(schedule="adaptive", restart="gradient"))``, below.
  * ``method="spectral"``: ``scale_by_spectral(initial_step)`` (Barzilai-Borwein steps under a
    non-monotone test that needs no function values), with ``pass_nonfinite=True``.
  * ``method="auto"`` (the default): with float64 params, the spectral steps while every
    accepted pair shows positive curvature, then, from the first pair that curves down
    (``<s, y> < 0``: a non-convex region), the Nesterov method, started afresh there; the two
    phases share their point and gradient buffers. With float32 (or lower) params, the Nesterov
    method from the start: the spectral method's long steps (about ``1/mu``) amplify the
    rounding of the iterates by up to the condition number, so in float32 it stalls on
    ill-conditioned problems (see :func:`scale_by_spectral`).

  Non-finite gradients or losses: the spectral steps back out of a trial point where they are
  not finite (the guard passes them on, ``pass_nonfinite``); the Nesterov method's steps there
  are skipped by the guard, which stops after ``max_nonfinite`` in a row.

  The spectral steps sweep the spectrum of a convex loss and need fewer gradients than any
  fixed-parameter Nesterov iteration on ill-conditioned problems, but they are chaotic (their
  counts vary with rounding) and slower where a non-convex loss curves upward along most steps:
  there the switch comes late, and ``method="nesterov"`` is the better choice.

  The Nesterov method: with ``dy = y_k - y_{k-1}`` and ``dg = g_k - g_{k-1}``,

  .. math::

    L_k = \max(0.9\, L_{k-1}, \|dg\|^2 / \langle dg, dy \rangle), \quad u_k = -g_k / L_k,
    \quad m_{k+1} = b_{k-1} m_k + u_k, \quad \Delta y_k = u_k + b_k m_{k+1},

  with a restart whenever the step goes uphill (``g_k . (x_{k+1} - x_k) > 0``, O'Donoghue &
  Candes: the buffer is zeroed and the step drops its momentum). The momentum follows FISTA's
  ``b_k = (t_k - 1)/t_{k+1}`` until the first restart, then the strongly convex
  ``b_k = (sqrt(kappa_k) - 1)/(sqrt(kappa_k) + 1)`` with the condition number ``kappa_k``
  read from the restart intervals: a run of ``K`` steps between restarts means
  ``kappa >= (2K/pi)^2`` (the slowest mode turns half a period in about ``pi sqrt(kappa)``
  steps; the factor 2 errs towards momentum), and ``kappa_k`` is the largest such bound so far,
  the current run included. No learning rate and no momentum to choose: the step comes from the
  curvature that consecutive gradients reveal (the co-coercivity estimate never exceeds L, so the
  step is never below ``1/L``; the decayed maximum lets it grow by up to 11% per step where the
  curvature falls), and restart plus the estimated ``kappa`` give the linear rate of strongly
  convex problems without knowing ``mu``. ``schedule="convex"`` is FISTA with restart
  throughout. ``safety``, ``decay``, ``estimate``, ``schedule``, ``restart`` and
  ``accumulator_dtype`` belong to it (with ``"auto"``, to its phase) and must keep their
  defaults with ``method="spectral"``.

  Extra arguments: with ``value`` and ``value_fn`` (passed by :func:`minimize`, Optimistix and any
  Optax line-search loop) the first step is checked by backtracking, so a wild ``initial_step``
  costs a few function evaluations once; every later step evaluates nothing beyond the gradient.
  Without them (gradient-only, e.g. Flax ``TrainState``) the first step is a small probe.

  Readable state (``optax.tree.get``): ``learning_rate`` (the step in use), ``rejections`` (the
  spectral phase's rejected trials), ``switched`` (``"auto"`` with float64 params: the Nesterov
  phase has begun),
  ``momentum``, ``restarts``, ``condition_number`` (the Nesterov method).

  Memory: three parameter-sized buffers (momentum, previous point, previous gradient; the
  spectral method needs the last two only).

  Args:
    method: ``"auto"``, ``"nesterov"`` or ``"spectral"`` (above).
    initial_step: the first step; ``None`` for a scale-free probe.
    safety: the step is ``safety / L_k``.
    decay: forgetting factor of the curvature estimate (``1`` keeps the running maximum, so the
      step never grows).
    estimate: the two-point curvature estimate of :func:`scale_by_curvature`.
    schedule: momentum schedule of :func:`nesterov`; ``"adaptive"`` needs a ``restart``.
    restart: restart scheme of :func:`nesterov`.
    accumulator_dtype: dtype of the momentum buffer.
    gtol, rtol, ftol, xtol, max_steps, patience, min_learning_rate, max_nonfinite: the stopping
      signal (:func:`stop_when`); by default it stops at ``||g|| <= 1e-6 ||g_0||``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a stopping signal (:func:`should_stop`).

  Examples:
    >>> import jax.numpy as jnp, nag_optax
    >>> loss = lambda x: jnp.sum(jnp.array([1.0, 10.0, 1000.0]) * (x - 1.0) ** 2)
    >>> sol = nag_optax.minimize(loss, jnp.zeros(3), nag_optax.auto_nag())
    >>> print(jnp.round(sol.params, 2), sol.stop_reason.name)
    [1. 1. 1.] RTOL

  References:
    Beck & Teboulle, `FISTA <https://doi.org/10.1137/080716542>`_, 2009.

    O'Donoghue & Candes, `Adaptive restart for accelerated gradient schemes
    <https://arxiv.org/abs/1204.3982>`_, 2015.

    Malitsky & Mishchenko, `Adaptive gradient descent without descent
    <https://arxiv.org/abs/1910.09529>`_, 2020.

    Raydan, `The Barzilai and Borwein gradient method for the large scale unconstrained
    minimization problem <https://doi.org/10.1137/S1052623494266365>`_, SIAM J. Optim. 1997.
  """
  validation.check_choice("method", method, ("auto", "nesterov", "spectral"))
  if method == "spectral":
    nesterov_only = dict(
      safety=(safety, 1.0),
      decay=(decay, 0.9),
      estimate=(estimate, "cocoercive"),
      schedule=(schedule, "adaptive"),
      restart=(restart, "gradient"),
      accumulator_dtype=(accumulator_dtype, None),
    )
    for name, (given, default) in nesterov_only.items():
      if given != default:
        raise ValueError(
          f"auto_nag(method='spectral') has no {name} (it belongs to method='nesterov'); "
          f"got {name}={given!r}."
        )
  stop = functools.partial(
    stopping.stop_when,
    gtol=gtol,
    rtol=rtol,
    ftol=ftol,
    xtol=xtol,
    max_steps=max_steps,
    patience=patience,
    min_learning_rate=min_learning_rate,
    max_nonfinite=max_nonfinite,
  )
  if method == "spectral":
    # The spectral steps back out of a non-finite trial point, so the guard passes it on.
    return stop(spectral.scale_by_spectral(initial_step), pass_nonfinite=True)
  curvature = step_size.scale_by_curvature(
    initial_step, safety=safety, decay=decay, estimate=estimate
  )
  accelerated = momentum_lib.nesterov(
    schedule=schedule, restart=restart, accumulator_dtype=accumulator_dtype
  )
  nesterov = stop(optax.chain(curvature, accelerated))
  if method == "nesterov":
    return nesterov
  return hybrid.by_precision(
    stop(
      hybrid.spectral_then_nesterov(
        spectral.scale_by_spectral(initial_step), curvature, accelerated
      ),
      pass_nonfinite=True,
    ),
    nesterov,
  )


# The floor of both annealings, as a fraction of the distance-based rate: low enough for the
# normalised steps of auto_nag_sgd (whose length barely shrinks with the gradient) to settle in a
# narrow valley, high enough that the rate never collapses.
ANNEALING_FLOOR = 0.03

# auto_nag_sgd's bounded annealing: the step is halved after 3 windows of 25 updates without a
# new lowest mean training loss, down to the floor, once the loss has started to fall (the mean
# of a 25-update window 10% below the first one's), so that a run sitting at its initial loss
# (a recurrent network at chance level) is not annealed before it learns. Built once; a
# transformation is immutable.
DEFAULT_PLATEAU = annealing.anneal_after_progress(
  optax.contrib.reduce_on_plateau(
    factor=0.5, patience=3, accumulation_size=25, min_scale=ANNEALING_FLOOR
  )
)


# auto_nadamw's annealing: the step is halved after 10 windows of 25 updates (250 updates)
# without a new lowest mean training loss, down to the floor, once the loss has started to fall
# (as above). Its iterate average does the settling a decayed schedule does at the end of a run,
# so the step is only halved on long plateaus.
AVERAGED_PLATEAU = annealing.anneal_after_progress(
  optax.contrib.reduce_on_plateau(
    factor=0.5, patience=10, accumulation_size=25, min_scale=ANNEALING_FLOOR
  )
)


# The validation stop of the minibatch optimizers, when validation_patience is set: a new best must
# improve on the best by 1% of it (a loss creeping down by tiny amounts is not progress), and the
# stop waits at least a quarter of the step of the best (so it comes about 1.25x that step in a
# long run), whatever validation_patience is.
VALIDATION_MIN_DELTA = 0.01
VALIDATION_PATIENCE_RATIO = 0.25


def _minibatch_stop(inner, **criteria) -> optax.GradientTransformationExtraArgs:
  """The minibatch optimizers' stopping signal around ``inner``; a step is decided from its
  inputs (their directions are finite whenever their inputs are)."""
  return stopping.stop_when(inner, check_updates=False, **criteria)


@validation.keyword_only(distance.KEYWORD_ONLY_HINT)
def auto_nag_sgd(
  *,
  learning_rate: optax.ScalarOrSchedule = 1.0,
  initial_learning_rate: Optional[float] = None,
  momentum: float = 0.9,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
  max_relative_step: Optional[float] = None,
  plateau: Optional[optax.GradientTransformation] = DEFAULT_PLATEAU,
  subsample: Optional[int] = None,
  average_power: Optional[jax.typing.ArrayLike] = None,
  average_dtype: Optional[jax.typing.DTypeLike] = "bfloat16",
  min_learning_rate: Optional[float] = None,
  patience: Optional[int] = None,
  validation_patience: Optional[int] = None,
  validation_min_delta: float = VALIDATION_MIN_DELTA,
  validation_patience_ratio: float = VALIDATION_PATIENCE_RATIO,
  max_steps: Optional[int] = None,
  max_nonfinite: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""Tuning-free Nesterov SGD for minibatch training: the learning rate sets itself.

  ``stop_when(chain(scale_by_distance(step_scale=1 - momentum), nesterov(momentum)))``: the
  step direction is the minibatch gradient over its running root mean square,
  ``a_k = g_k / sqrt(v_k)``, and the rate is the distance estimate ``d_k`` of
  :func:`scale_by_distance` (Prodigy's D: the gradients against the displacement from the start,
  accumulated over the whole run), which starts at ``initial_learning_rate`` and grows until it
  matches the distance the training has to travel; it never decreases, so it cannot collapse
  under minibatch noise. Nesterov's lookahead momentum (PyTorch's / ``optax.sgd(nesterov=True)``'s
  form) sums the steps ``u_k = -(1 - b) d_k a_k``, so the effective step is ``d_k a_k``.

  Annealing, bounded: with the training loss passed as ``value`` (Flax NNX
  ``optimizer.update(model, grads, value=loss)``), the step is halved whenever the loss averaged
  over windows of 25 updates has not set a new low for 3 windows, down to 3% of the distance
  rate at most (``optax.contrib.reduce_on_plateau(0.5, 3, accumulation_size=25,
  min_scale=0.03)``): enough to settle into a narrow valley (the Rosenbrock checks) and to
  finish a run the way a decayed schedule does, never a collapse. It starts once the loss has
  started to fall (:func:`anneal_after_progress`: a 25-update window's mean 10% below the first
  window's), so a run that sits at its initial loss before it learns, as recurrent networks do,
  is not annealed before it begins. Without ``value`` the rate is the distance estimate alone.

  Works in every Optax / Flax loop: no extra argument is needed (Flax linen's ``TrainState``
  passes none). A non-finite gradient skips the update (state kept); ``max_nonfinite`` of them
  in a row stop the run (:func:`stop_when`).

  Stopping (none is set by default, so a fixed-length loop trains to the end; after a stop the
  updates are exactly zero and :func:`should_stop` tells the loop): ``validation_patience``
  stops once the ``validation_loss`` extra argument has not improved for that many updates (pass
  the latest measured validation loss at every update); ``patience`` does the same on the
  training loss ``value``; ``max_steps`` and ``min_learning_rate`` are :func:`stop_when`'s.

  Memory, in float32 parameter-sized buffers: about 1.1, SGD momentum's 1 plus an eighth (the
  distance estimate's first params and gradient sum live on a 1/16 subsample, ``subsample``).
  The steps are checked for finite inputs before they are taken (:func:`stop_when` with
  ``check_updates=False``: the normalised direction is finite whenever its inputs are).

  All arguments are keyword-only.

  Args:
    learning_rate: a factor on the tuned rate (a float or an optax schedule of the update
      count, e.g. a warm-up); ``1`` for the rate as estimated. It takes effect at every update,
      under ``optax.inject_hyperparams`` too.
    initial_learning_rate: the estimate the rate starts from; any value from ``1e-8`` to ``1``
      (a small one grows within tens of steps, a large one is cut to ``max_relative_step`` of
      the params' rms); ``None`` for ``1e-6``. Read once, by ``init``.
    momentum: the Nesterov momentum coefficient in ``[0, 1)``.
    accumulator_dtype: dtype of the momentum buffer.
    max_relative_step: the cap on the first step relative to the params' rms; ``None`` for
      ``0.1``. Read once, by ``init``.
    plateau: the bounded annealing on the training loss ``value`` (see above); ``None`` for none.
    subsample: the distance estimate's sums read every ``subsample``-th slice of each leaf
      (:func:`scale_by_distance`); ``None`` for 16, ``1`` for the full sums.
    average_power: the power ``p`` of an iterate average (:func:`average_iterates`, kept as a
      bfloat16 offset from the params: half a buffer); ``None`` (default) for none.
    average_dtype: dtype of the average's offset (``None``: the average itself, a full buffer).
    min_learning_rate, patience, validation_patience, max_steps, max_nonfinite: the stopping
      signal (:func:`stop_when`).
    validation_min_delta, validation_patience_ratio: the validation stop's minimum relative
      improvement and relative patience (:func:`stop_when`), used once ``validation_patience``
      is set.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a stopping signal; ``optax.tree.get(state,
    "learning_rate")`` reads the rate in use.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.auto_nag_sgd()
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grads = jax.value_and_grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params, value=value)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> print(float(loss(params)) < 1e-3)
    True

  References:
    Mishchenko & Defazio, `Prodigy <https://arxiv.org/abs/2306.06101>`_, ICML 2024.

    Sutskever, Martens, Dahl & Hinton, `On the importance of initialization and momentum in
    deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013.
  """
  validation.check_range("momentum", momentum, low=0.0, high=1.0, high_inclusive=False)
  validation.check_range("average_power", average_power, low=0.0, allow_none=True)
  validation.check_float_dtype("average_dtype", average_dtype)
  inner = optax.chain(
    distance.scale_by_distance(
      learning_rate=learning_rate,
      initial_learning_rate=initial_learning_rate,
      step_scale=1.0 - momentum,
      max_relative_step=max_relative_step,
      plateau=plateau,
      subsample=subsample,
    ),
    momentum_lib.nesterov(momentum, accumulator_dtype=accumulator_dtype),
  )
  if average_power is not None:
    inner = averaging.average_iterates(inner, power=average_power, offset_dtype=average_dtype)
  return _minibatch_stop(
    inner,
    max_steps=max_steps,
    patience=patience,
    validation_patience=validation_patience,
    validation_min_delta=validation_min_delta,
    validation_patience_ratio=validation_patience_ratio,
    min_learning_rate=min_learning_rate,
    max_nonfinite=max_nonfinite,
  )


@validation.keyword_only(distance.KEYWORD_ONLY_HINT)
def auto_nadamw(
  *,
  learning_rate: optax.ScalarOrSchedule = 1.0,
  initial_learning_rate: Optional[float] = None,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: Union[float, jax.Array] = 0.0,
  max_relative_step: Optional[float] = None,
  plateau: Optional[optax.GradientTransformation] = AVERAGED_PLATEAU,
  average_power: Optional[jax.typing.ArrayLike] = 7.0,
  mu_dtype: Optional[jax.typing.DTypeLike] = "bfloat16",
  average_dtype: Optional[jax.typing.DTypeLike] = "bfloat16",
  subsample: Optional[int] = None,
  factored: bool = False,
  min_learning_rate: Optional[float] = None,
  patience: Optional[int] = None,
  validation_patience: Optional[int] = None,
  validation_min_delta: float = VALIDATION_MIN_DELTA,
  validation_patience_ratio: float = VALIDATION_PATIENCE_RATIO,
  max_steps: Optional[int] = None,
  max_nonfinite: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""Tuning-free Nesterov-Adam with decoupled weight decay: the learning rate sets itself.

  ``stop_when(average_iterates(scale_by_distance(direction=chain(scale_by_adam(b1, b2, eps,
  nesterov=True, mu_dtype), add_decayed_weights(weight_decay)), weighted_direction=(b1, b2)),
  power=7, offset_dtype=average_dtype), check_updates=False)``: the direction is
  ``optax.nadamw``'s (Adam's per-coordinate second-moment scaling of Nesterov's lookahead first
  moment, Dozat 2016, plus decoupled weight decay ``lambda x``) and the rate is the distance
  estimate ``d_k`` of :func:`scale_by_distance`, read from the raw gradients against the
  displacement from the start (Prodigy's D estimate):

  .. math::

    x_{k+1} = x_k - d_k \left(\frac{\hat m_k}{\sqrt{\hat v_k} + \epsilon} + \lambda x_k\right).

  With a constant ``d`` this is exactly ``optax.nadamw(d, b1, b2, eps, weight_decay=lambda)``.
  While ``d`` grows, Adam's moments are averages of the gradients weighted by ``d_k / d_0``
  (Prodigy's moments of ``d_k g_k``; ``scale_by_distance(weighted_direction=(b1, b2))``), so the
  second moment forgets the warm-up's gradients instead of carrying them for a thousand steps
  (the normalisation factor of the weighted averages multiplies the whole direction, decay term
  included, and is 1 once ``d`` stops growing).
  The estimate starts at ``initial_learning_rate``, grows geometrically while the gradients keep
  pointing away from the start, and never decreases: no rate to tune, none that collapses.
  :func:`auto_nag_sgd` is its plain-SGD sibling.

  **Evaluate the average.** The state keeps the polynomial-decay average of the iterates
  (:func:`average_iterates`, weights about ``t^7``: the last quarter of the run carries 90% of
  the weight), read with :func:`averaged_params`. Training goes on at the full rate while the
  average removes the minibatch noise, which is what a decayed schedule does at the end of a
  run, at any step and without a horizon. Evaluate, checkpoint for deployment and stop on the
  average; with Flax NNX::

    eval_model = nnx.clone(model)
    nnx.update(eval_model, nag_optax.averaged_params(optimizer.opt_state,
                                                     nnx.state(model, nnx.Param)))

  (as ``optax.contrib.schedule_free_eval_params`` for the schedule-free optimizers). The average
  is kept as its offset from the params in ``average_dtype`` (:func:`average_iterates`), so
  reading it needs the current params. ``average_power=None`` drops the average and its buffer.

  Annealing, bounded: with the training loss passed as ``value`` (Flax NNX
  ``optimizer.update(model, grads, value=loss)``), the step is halved whenever the loss averaged
  over windows of 25 updates has not set a new low for 10 windows, down to 3% of the distance
  rate at most (``optax.contrib.reduce_on_plateau(0.5, 10, accumulation_size=25,
  min_scale=0.03)``): enough to settle into a narrow valley (the Rosenbrock checks), never a
  collapse; it starts once the loss has started to fall (:func:`anneal_after_progress`). Without
  ``value`` the rate is the distance estimate alone.

  Stopping: as :func:`auto_nag_sgd` (``validation_patience`` with a ``validation_loss`` extra
  argument, ``patience`` on ``value``, ``max_steps``, ``min_learning_rate``); none by default.

  Memory, in float32 parameter-sized buffers: about 2.1, Adam's 2 plus an eighth. The second
  moment is float32 (1); the first moment (``mu_dtype``) and the average's offset
  (``average_dtype``) bfloat16 (1/2 each); the distance estimate's first params and gradient
  sum live on a 1/16 subsample (``subsample``: 1/8 together). ``factored=True``, the lean mode,
  replaces the second moment by Adafactor's row and column statistics for every leaf whose two
  longest axes have at least 128 indices (:func:`~nag_optax.scale_by_distance`'s direction is
  then Adam's with ``v`` rebuilt from them, Shazeer & Stern 2018): about 1.1 buffers. The
  steps are checked for finite inputs before they are taken (:func:`stop_when` with
  ``check_updates=False``: the direction is finite whenever its inputs are, given ``eps > 0``).

  All arguments are keyword-only.

  Args:
    learning_rate: a factor on the tuned rate (a float or an optax schedule of the update
      count); ``1`` for the rate as estimated. It takes effect at every update, under
      ``optax.inject_hyperparams`` too.
    initial_learning_rate: the estimate the rate starts from; any value from ``1e-8`` to ``1``;
      ``None`` for ``1e-6``. Read once, by ``init``.
    b1, b2, eps: Adam's moment decays and denominator offset.
    weight_decay: the decoupled weight decay ``lambda`` (scaled by the rate).
    max_relative_step: the cap on the first step relative to the params' rms; ``None`` for
      ``0.1``. Read once, by ``init``.
    plateau: the bounded annealing on the training loss ``value`` (see above); ``None`` for none.
    average_power: the power ``p`` of the iterate average (:func:`average_iterates`); ``None``
      for no average.
    mu_dtype: dtype of Adam's first moment; ``None`` for the params'.
    average_dtype: dtype of the average's offset from the params; ``None`` keeps the average
      itself, at least float32 (a full buffer), and :func:`averaged_params` then reads it
      without the params.
    subsample: the distance estimate's sums read every ``subsample``-th slice of each leaf
      (:func:`scale_by_distance`); ``None`` for 16, ``1`` for the full sums.
    factored: the lean mode: Adafactor's factored second moment (see Memory).
    min_learning_rate, patience, validation_patience, max_steps, max_nonfinite: the stopping
      signal (:func:`stop_when`); pass the validation loss of the averaged params as
      ``validation_loss``.
    validation_min_delta, validation_patience_ratio: the validation stop's minimum relative
      improvement and relative patience (:func:`stop_when`), used once ``validation_patience``
      is set.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a stopping signal; ``optax.tree.get(state,
    "learning_rate")`` reads the rate in use and :func:`averaged_params` the average.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.auto_nadamw()
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grads = jax.value_and_grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params, value=value)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> average = nag_optax.averaged_params(state, params)
    >>> print(float(loss(params)) < 1e-3, float(loss(average)) < 1e-3)
    True True

  References:
    Dozat, `Incorporating Nesterov momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, ICLR 2016 workshop.

    Loshchilov & Hutter, `Decoupled weight decay regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.

    Shazeer & Stern, `Adafactor: adaptive learning rates with sublinear memory cost
    <https://arxiv.org/abs/1804.04235>`_, ICML 2018.

    Mishchenko & Defazio, `Prodigy <https://arxiv.org/abs/2306.06101>`_, ICML 2024.

    Shamir & Zhang, `Stochastic gradient descent for non-smooth optimization: convergence
    results and optimal averaging schemes <https://arxiv.org/abs/1212.1824>`_, ICML 2013.
  """
  validation.check_range("average_power", average_power, low=0.0, allow_none=True)
  validation.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
  validation.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
  validation.check_range("eps", eps, low=0.0, low_inclusive=False)  # keeps the direction finite
  validation.check_range("weight_decay", weight_decay, low=0.0)
  validation.check_float_dtype("mu_dtype", mu_dtype)
  validation.check_float_dtype("average_dtype", average_dtype)
  if not isinstance(factored, bool):
    raise TypeError(f"factored must be a bool, got {factored!r}.")
  if factored:
    moments = factored_lib.scale_by_factored_nadam(b1, b2, eps, mu_dtype=mu_dtype)
  else:
    moments = optax.scale_by_adam(b1, b2, eps, nesterov=True, mu_dtype=mu_dtype)
  direction = optax.chain(moments, optax.add_decayed_weights(weight_decay))
  inner = distance.scale_by_distance(
    learning_rate=learning_rate,
    initial_learning_rate=initial_learning_rate,
    direction=direction,
    max_relative_step=max_relative_step,
    plateau=plateau,
    weighted_direction=(b1, b2),
    subsample=subsample,
  )
  if average_power is not None:
    inner = averaging.average_iterates(inner, power=average_power, offset_dtype=average_dtype)
  return _minibatch_stop(
    inner,
    max_steps=max_steps,
    patience=patience,
    validation_patience=validation_patience,
    validation_min_delta=validation_min_delta,
    validation_patience_ratio=validation_patience_ratio,
    min_learning_rate=min_learning_rate,
    max_nonfinite=max_nonfinite,
  )
