"""Reference loops the tests compare against: a plain optax loop under lax.while_loop."""

import jax
import jax.numpy as jnp
import optax


def iterates(tx, fun, x0, num_steps, *, with_value=False):
  """All iterates y_0..y_num_steps of a plain optax loop on ``fun`` (a lax.scan)."""
  value_and_grad = jax.value_and_grad(fun)

  def step(carry, _):
    x, state = carry
    v, g = value_and_grad(x)
    extra = dict(value=v, grad=g, value_fn=fun) if with_value else {}
    u, state = tx.update(g, state, x, **extra)
    x = optax.apply_updates(x, u)
    return (x, state), x

  @jax.jit
  def run(x0):
    (_, state), xs = jax.lax.scan(step, (x0, tx.init(x0)), None, length=num_steps)
    return jnp.concatenate([x0[None], xs]), state

  return run(x0)


def steps_to_target(tx, fun, x0, x_star, eps, max_steps, *, with_value=False):
  """Number of updates until ||x - x*|| <= eps ||x0 - x*|| (max_steps if never), and final state."""
  value_and_grad = jax.value_and_grad(fun)
  r0 = jnp.linalg.norm(x0 - x_star)

  def cond(carry):
    k, x, _ = carry
    return jnp.logical_and(k < max_steps, jnp.linalg.norm(x - x_star) > eps * r0)

  def body(carry):
    k, x, state = carry
    v, g = value_and_grad(x)
    extra = dict(value=v, grad=g, value_fn=fun) if with_value else {}
    u, state = tx.update(g, state, x, **extra)
    return k + 1, optax.apply_updates(x, u), state

  @jax.jit
  def run(x0):
    return jax.lax.while_loop(cond, body, (jnp.asarray(0), x0, tx.init(x0)))

  k, x, state = run(x0)
  return int(k), x, state
