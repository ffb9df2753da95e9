"""The helpers the full-batch step rules share: the first step's guess and a backtracking search.

:func:`scale_by_curvature`, :func:`scale_by_backtracking` and :func:`scale_by_spectral` all need
a first step before any curvature has been seen, and check it (or every step) by the
sufficient-decrease test when the loss is available.
"""

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp

from nag_optax._src import numerics


def initial_step(step: Any, params: Any, grad: Any, dtype: Any) -> jax.Array:
  """The first step: ``step`` when given, else a probe of relative length ``1e-4`` along ``-g``,
  ``1e-4 max(||x||, 1) / ||g||`` (the same length if ``g = 0``)."""
  if step is not None:
    return jnp.asarray(step, dtype)
  gnorm = numerics.norm(grad, dtype)
  pnorm = numerics.norm(params, dtype)
  length = 1e-4 * jnp.maximum(pnorm, 1.0)
  probe = numerics.safe_div(length, gnorm, default=length)
  return probe.astype(dtype)


def backtrack(
  value_fn: Callable[[Any], jax.typing.ArrayLike],
  params: Any,
  grad: Any,
  value: jax.typing.ArrayLike,
  step: jax.typing.ArrayLike,
  *,
  decrease_factor: float,
  sufficient_decrease: float,
  max_steps: int,
  dtype: Any,
  active: jax.typing.ArrayLike = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Shrink ``step`` until the sufficient-decrease (Armijo) test holds along ``-g``,

  .. math::

    f(y - \eta g) \le f(y) - c\, \eta \|g\|^2,

  in a bounded ``lax.while_loop``, each rejection multiplying ``eta`` by ``decrease_factor``.

  A non-finite trial value is a rejection, and so is one that does not lower ``f`` measurably
  (accepting it would let a growing step grow without bound), so a loss that returns inf or NaN
  only shrinks the step.

  Returns:
    ``(step, accepted, evaluations)``: the accepted step, or the last (smallest) one with
    ``accepted`` False when no trial passed within ``max_steps`` evaluations. With ``active``
    False nothing is evaluated and ``step`` is returned as accepted.
  """
  f0 = jnp.asarray(value).astype(dtype)
  gnorm2 = jnp.square(numerics.norm(grad, dtype))

  def trial_ok(eta):
    trial = jax.tree.map(lambda p, g: p - eta.astype(p.dtype) * g.astype(p.dtype), params, grad)
    f = jnp.asarray(value_fn(trial)).astype(dtype)
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
    cond, body, (jnp.asarray(step, dtype), ~jnp.asarray(active), jnp.zeros((), jnp.int32))
  )
  return eta, accepted, evals
