"""Optimizers built as chains of the package's blocks."""

from typing import Any, Optional

import optax

from nag_optax._src import momentum as momentum_lib
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
