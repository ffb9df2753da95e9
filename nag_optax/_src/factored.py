"""Nesterov-Adam with a factored second moment: Adam's direction in almost no extra memory.

Adam keeps a second moment per coordinate. For a matrix (or any leaf whose two largest axes are
long), Adafactor keeps only its row and column means and rebuilds the moment as their outer
product over the mean: ``n + m`` numbers for ``n x m``. The first moment is Adam's, in
``mu_dtype``; the step is Adam's with the Nesterov lookahead (``optax.scale_by_adam(nesterov=
True)``), so the two differ only in the second moment's estimate.
"""

from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax._src import validation

# Adafactor's choice: a leaf is factored when its two largest axes have at least this many indices.
MIN_DIM_SIZE_TO_FACTOR = 128
# Added to the squared gradients so that a zero row or column never divides by zero.
SQUARE_FLOOR = 1e-30


class _Moments(NamedTuple):
  """One leaf's new statistics and the second moment they give."""

  row: jax.Array
  col: jax.Array
  full: jax.Array
  second: jax.Array


class ScaleByFactoredNadamState(NamedTuple):
  """State of :func:`scale_by_factored_nadam`."""

  count: jax.Array  #: int32: updates taken.
  mu: Any  #: the first moment, in ``mu_dtype``.
  nu_row: Any  #: per factored leaf, the EMA of the squared gradient's mean over its longest axis.
  nu_col: Any  #: per factored leaf, the same over its second longest axis.
  nu: Any  #: per leaf that is not factored, Adam's second moment (a 1-element dummy otherwise).


def factored_axes(shape: tuple, min_dim_size: int = MIN_DIM_SIZE_TO_FACTOR) -> Optional[tuple]:
  """``(second longest axis, longest axis)`` of a leaf that is factored, else None."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape, kind="stable")
  if shape[order[-2]] < min_dim_size:
    return None
  return int(order[-2]), int(order[-1])


def scale_by_factored_nadam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  *,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""Nesterov-Adam's direction with Adafactor's factored second moment.

  For a leaf whose two largest axes ``i < j`` (by length) both have at least 128 indices,

  .. math::

    R_t = \beta_2 R_{t-1} + (1 - \beta_2)\, \mathrm{mean}_j(g_t^2), \quad
    C_t = \beta_2 C_{t-1} + (1 - \beta_2)\, \mathrm{mean}_i(g_t^2), \quad
    v_t = \frac{R_t \otimes C_t}{\mathrm{mean}_i(R_t)},

  (Shazeer & Stern 2018); other leaves keep Adam's ``v_t``. The update is
  ``optax.scale_by_adam(b1, b2, eps, nesterov=True)``'s with this ``v_t``, bias corrections
  included.

  Args:
    b1, b2: the moments' decays.
    eps: added to the root of the bias-corrected second moment.
    mu_dtype: dtype of the first moment; ``None`` for the params'.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Shazeer & Stern, `Adafactor: adaptive learning rates with sublinear memory cost
    <https://arxiv.org/abs/1804.04235>`_, ICML 2018.

    Dozat, `Incorporating Nesterov momentum into Adam
    <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, ICLR 2016 workshop.
  """
  validation.check_float_dtype("mu_dtype", mu_dtype)

  def init_fn(params):
    params = validation.as_arrays(params)

    def row(p):
      axes = factored_axes(p.shape)
      return jnp.zeros((1,), p.dtype) if axes is None else jnp.zeros_like(p).mean(axis=axes[1])

    def col(p):
      axes = factored_axes(p.shape)
      return jnp.zeros((1,), p.dtype) if axes is None else jnp.zeros_like(p).mean(axis=axes[0])

    def full(p):
      return jnp.zeros_like(p) if factored_axes(p.shape) is None else jnp.zeros((1,), p.dtype)

    return ScaleByFactoredNadamState(
      count=jnp.zeros((), jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu_row=jax.tree.map(row, params),
      nu_col=jax.tree.map(col, params),
      nu=jax.tree.map(full, params),
    )

  def update_fn(updates, state, params=None):
    del params
    count = jnp.asarray(optax.safe_increment(state.count))
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)

    def second_moment(g, r, c, v):
      """The leaf's new ``R``, ``C`` (or Adam's ``v``) and its second moment."""
      axes = factored_axes(g.shape)
      g2 = jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
      if axes is None:
        v_new = b2 * v + (1.0 - b2) * g2
        return _Moments(r, c, v_new.astype(v.dtype), v_new)
      i, j = axes
      r_new = b2 * r + (1.0 - b2) * jnp.mean(g2 + SQUARE_FLOOR, axis=j)
      c_new = b2 * c + (1.0 - b2) * jnp.mean(g2 + SQUARE_FLOOR, axis=i)
      # R has lost axis j, so axis i of the leaf is axis i - (j < i) of R.
      r_mean = jnp.mean(r_new, axis=i - int(j < i), keepdims=True)
      v_new = jnp.expand_dims(r_new / r_mean, j) * jnp.expand_dims(c_new, i)
      return _Moments(r_new.astype(r.dtype), c_new.astype(c.dtype), v, v_new)

    moments = jax.tree.map(second_moment, updates, state.nu_row, state.nu_col, state.nu)
    pick = lambda k: jax.tree.map(
      lambda t: t[k], moments, is_leaf=lambda x: isinstance(x, _Moments)
    )
    nu_row, nu_col, nu, second = pick(0), pick(1), pick(2), pick(3)
    mu_hat = jax.tree.map(
      lambda m, g: b1 * m + (1 - b1) * g,
      optax.tree.bias_correction(mu, b1, optax.safe_increment(count)),
      optax.tree.bias_correction(updates, b1, count),
    )
    nu_hat = optax.tree.bias_correction(second, b2, count)
    new_updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return new_updates, ScaleByFactoredNadamState(
      count=count, mu=optax.tree.cast(mu, mu_dtype), nu_row=nu_row, nu_col=nu_col, nu=nu
    )

  return optax.GradientTransformation(init_fn, update_fn)
