"""Optimizers built as chains of the package's blocks."""

from typing import Any, Optional

import optax

from nag_optax._src import momentum as momentum_lib
from nag_optax._src import step_size
from nag_optax._src import stopping
from nag_optax._src import validation


def nag(
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule = 0.9,
    *,
    schedule: str = "constant",
    condition_number: Optional[Any] = None,
    restart: Optional[str] = None,
    accumulator_dtype: Optional[Any] = None,
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
    schedule: ``"constant"``, ``"convex"`` or ``"strongly_convex"`` (see :func:`nesterov`).
    condition_number: ``L / mu``, for ``schedule="strongly_convex"``.
    restart: ``None``, ``"gradient"``, ``"speed"`` or ``"function"`` (see :func:`nesterov`).
    accumulator_dtype: dtype of the momentum buffer.
    min_restart_interval: minimum steps between speed restarts.

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
    initial_step: Optional[float] = None,
    safety: float = 1.0,
    decay: float = 0.9,
    estimate: str = "cocoercive",
    schedule: str = "convex",
    restart: Optional[str] = "gradient",
    accumulator_dtype: Optional[Any] = None,
    gtol: Optional[float] = None,
    rtol: Optional[float] = 1e-6,
    ftol: Optional[float] = None,
    xtol: Optional[float] = None,
    max_steps: Optional[int] = None,
    patience: Optional[int] = None,
    min_learning_rate: Optional[float] = None,
    max_nonfinite: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""Tuning-free accelerated gradient descent for full-batch (deterministic) problems.

  ``stop_when(chain(scale_by_curvature(decay=0.9, estimate="cocoercive"),
  nesterov(schedule="convex", restart="gradient")))``: with ``dy = y_k - y_{k-1}`` and
  ``dg = g_k - g_{k-1}``,

  .. math::

    L_k = \max(0.9\, L_{k-1}, \|dg\|^2 / \langle dg, dy \rangle), \quad u_k = -g_k / L_k,
    \quad m_{k+1} = b_{k-1} m_k + u_k, \quad \Delta y_k = u_k + b_k m_{k+1},

  with FISTA's ``b_k = (t_k - 1)/t_{k+1}``, reset to ``t = 1`` whenever the step goes uphill
  (``g_k . (x_{k+1} - x_k) > 0``, O'Donoghue & Candes). No learning rate and no momentum to
  choose: the step comes from the curvature that consecutive gradients reveal (the co-coercivity
  estimate never exceeds L, so the step is never below ``1/L``; the decayed maximum lets it grow
  by up to 11% per step where the curvature falls), and restart recovers the linear rate of
  strongly convex problems without knowing ``mu``.

  Extra arguments: with ``value`` and ``value_fn`` (passed by :func:`minimize`, Optimistix and any
  Optax line-search loop) the first step is checked by backtracking, so a wild ``initial_step``
  costs a few function evaluations once; every later step evaluates nothing beyond the gradient.
  Without them (gradient-only, e.g. Flax ``TrainState``) the first step is a small probe.

  Memory: three parameter-sized buffers (momentum, previous point, previous gradient).

  Args:
    initial_step: the first step; ``None`` for a scale-free probe.
    safety: the step is ``safety / L_k``.
    decay: forgetting factor of the curvature estimate (``1`` keeps the running maximum, so the
      step never grows).
    estimate: the two-point curvature estimate of :func:`scale_by_curvature`.
    schedule: momentum schedule of :func:`nesterov`.
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
  """
  inner = optax.chain(
      step_size.scale_by_curvature(initial_step, safety=safety, decay=decay, estimate=estimate),
      momentum_lib.nesterov(schedule=schedule, restart=restart,
                            accumulator_dtype=accumulator_dtype),
  )
  return stopping.stop_when(inner, gtol=gtol, rtol=rtol, ftol=ftol, xtol=xtol,
                            max_steps=max_steps, patience=patience,
                            min_learning_rate=min_learning_rate, max_nonfinite=max_nonfinite)


# auto_nag_sgd's plateau decay (built once; a transformation is immutable).
DEFAULT_PLATEAU = optax.contrib.reduce_on_plateau(factor=0.5, patience=5, accumulation_size=50)


def auto_nag_sgd(
    learning_rate: float = 1e-3,
    momentum: float = 0.9,
    *,
    hypergradient_rate: float = 0.1,
    warmup_growth: Optional[float] = 2.0,
    max_relative_step: Optional[float] = 0.1,
    plateau: Optional[optax.GradientTransformation] = DEFAULT_PLATEAU,
    per_leaf: bool = True,
    accumulator_dtype: Optional[Any] = None,
    min_learning_rate: Optional[float] = None,
    patience: Optional[int] = None,
    max_steps: Optional[int] = None,
    max_nonfinite: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""Tuning-free Nesterov SGD for minibatch training: the learning rate adjusts itself.

  ``stop_when(chain(scale_by_hypergradient(per_leaf=True, plateau=reduce_on_plateau(...)),
  nesterov(0.9)))``: one rate per parameter leaf (layer weight, bias), each starting at
  ``learning_rate``, doubling while successive steps keep pointing the same way, then following
  the multiplicative hypergradient rule (it grows while the new minibatch gradient still points
  along the last applied step and shrinks when it points back); no update moves the parameters
  by more than ``max_relative_step`` of their norm, and every rate (and its ceiling) is halved
  whenever the training loss (passed as ``value``) stops improving. The momentum is PyTorch's /
  ``optax.sgd(nesterov=True)``'s. The full-batch step rules (curvature, backtracking, restart)
  assume exact gradients and values; this chain only averages cosines of noisy gradients. On
  the digits MLP and CNN benchmarks (``benchmarks/RESULTS.md``) it reaches the target accuracy
  at its default rate in about as many steps as the best rate of a tuned
  ``optax.sgd(nesterov=True)`` grid, and from initial rates between ``1e-4`` and ``10`` within
  2x of that.

  Works in every Optax / Flax loop: Flax NNX ``optimizer.update(model, grads, value=loss)`` feeds
  the plateau decay; Flax linen ``TrainState.apply_gradients(grads=...)`` passes no ``value`` and
  the rate then adapts from the gradients alone. A non-finite gradient skips the update (state
  kept); ``max_nonfinite`` of them in a row stop the run (:func:`stop_when`).

  Stopping: with ``min_learning_rate`` the signal fires once the plateau decay (or the
  hypergradient) has taken the rate below that floor: the seed scenario "train until the learning
  rate has decayed away". ``patience`` and ``max_steps`` are :func:`stop_when`'s. None is set by
  default, so a fixed-length training loop trains to the end; after a stop the updates are
  exactly zero and :func:`should_stop` tells the loop.

  Memory: two parameter-sized buffers (momentum and the previous parameters).

  Args:
    learning_rate: the initial rate; any value in ``[1e-4, 10]`` works for float32 params (see
      above and the precision note of :func:`scale_by_hypergradient`).
    momentum: the Nesterov momentum coefficient.
    hypergradient_rate, warmup_growth, max_relative_step, per_leaf: see
      :func:`scale_by_hypergradient`; one rate per parameter leaf by default.
    plateau: the decay on a plateau of the training loss, fed ``value``; by default
      ``optax.contrib.reduce_on_plateau(factor=0.5, patience=5, accumulation_size=50)`` (the
      loss averaged over windows of 50 minibatches, halved after 5 windows without a new best);
      ``None`` for no decay. A transformation, not numbers, so ``optax.inject_hyperparams``
      leaves it static.
    accumulator_dtype: dtype of the momentum buffer.
    min_learning_rate, patience, max_steps, max_nonfinite: the stopping signal
      (:func:`stop_when`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a stopping signal; ``optax.tree.get(state,
    "learning_rate")`` reads the rate in use.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.auto_nag_sgd()
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
    >>> for _ in range(100):
    ...   value, grads = jax.value_and_grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params, value=value)
    ...   params = optax.apply_updates(params, updates)
    >>> print(float(loss(params)) < 1e-3)
    True

  References:
    Baydin et al., `Online learning rate adaptation with hypergradient descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018.
    Sutskever, Martens, Dahl & Hinton, `On the importance of initialization and momentum in
    deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013.
  """
  inner = optax.chain(
      step_size.scale_by_hypergradient(
          learning_rate, hypergradient_rate=hypergradient_rate, warmup_growth=warmup_growth,
          max_relative_step=max_relative_step, plateau=plateau, per_leaf=per_leaf),
      momentum_lib.nesterov(momentum, accumulator_dtype=accumulator_dtype),
  )
  return stopping.stop_when(inner, max_steps=max_steps, patience=patience,
                            min_learning_rate=min_learning_rate, max_nonfinite=max_nonfinite)
