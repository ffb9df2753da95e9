"""A reference row for the full-batch suites: the spectral (Barzilai-Borwein) gradient method
with the adaptive ABBmin step rule, written here as an Optax transformation.

Gradient only, no momentum, no function values: x_{k+1} = x_k - a_k g_k with, for
``s = x_k - x_{k-1}`` and ``y = g_k - g_{k-1}``, the two Barzilai-Borwein steps
``a1 = <s, s> / <s, y>`` (long) and ``a2 = <s, y> / <y, y>`` (short); ABBmin takes the smallest
``a2`` of the last ``memory`` iterations when ``a2 / a1 < tau`` and then shrinks ``tau`` by 0.9,
else ``a1`` and grows ``tau`` by 1.1 (Frassoldati, Zanni & Zanghirati, "New adaptive stepsize
selections in gradient methods", J. Ind. Manag. Optim. 2008, with the adaptive threshold of
Bonettini, Zanella & Zanni 2009). Where ``<s, y> <= 0`` (no curvature seen) the step doubles.
The first step is a probe that moves the params by ``1e-6`` in rms.

It is a measurement of a direction for ``auto_nag``'s full-batch default, not a nag_optax API:
there is no safeguard for non-convex or non-smooth problems (the spectral step is non-monotone;
Raydan's globalisation needs function values), which a default would need.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

PROBE = 1e-6


class ABBminState(NamedTuple):
  count: jax.Array
  step: jax.Array
  tau: jax.Array
  short_steps: jax.Array  # the last `memory` short (BB2) steps, +inf where unset
  prev_params: optax.Params
  prev_grad: optax.Updates


def abbmin(tau: float = 0.8, memory: int = 3) -> optax.GradientTransformation:
  """The ABBmin spectral gradient step (see the module docstring); ``update`` needs ``params``."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    dtype = jax.tree.leaves(params)[0].dtype
    return ABBminState(
      count=jnp.zeros([], jnp.int32),
      step=jnp.zeros([], dtype),
      tau=jnp.asarray(tau, dtype),
      short_steps=jnp.full([memory], jnp.inf, dtype),
      prev_params=zeros,
      prev_grad=zeros,
    )

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("abbmin needs params: call update(grads, state, params).")
    s = optax.tree.sub(params, state.prev_params)
    y = optax.tree.sub(grads, state.prev_grad)
    sy, ss, yy = optax.tree.vdot(s, y), optax.tree.vdot(s, s), optax.tree.vdot(y, y)
    curved = (sy > 0) & jnp.isfinite(sy) & (yy > 0)
    long_step = ss / jnp.where(curved, sy, 1.0)
    short_step = sy / jnp.where(curved, yy, 1.0)
    shorts = jnp.where(
      curved, jnp.roll(state.short_steps, 1).at[0].set(short_step), state.short_steps
    )
    take_short = short_step < state.tau * long_step
    spectral = jnp.where(take_short, jnp.min(shorts), long_step)
    tau_next = jnp.where(curved, jnp.where(take_short, 0.9, 1.1) * state.tau, state.tau)
    probe = PROBE / jnp.sqrt(optax.tree.vdot(grads, grads) / optax.tree.size(grads))
    step = jnp.where(state.count == 0, probe, jnp.where(curved, spectral, 2.0 * state.step))
    updates = jax.tree.map(lambda g: (-step * g).astype(g.dtype), grads)
    new_state = ABBminState(
      count=state.count + 1,
      step=step,
      tau=tau_next,
      short_steps=shorts,
      prev_params=params,
      prev_grad=grads,
    )
    return updates, new_state

  return optax.GradientTransformation(init, update)


NAME = "spectral gradient, ABBmin step (Barzilai-Borwein; no momentum, no safeguard)"
