"""Iterate averaging around any transformation: the polynomial-decay average of the params."""

from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation


class AverageIteratesState(NamedTuple):
  """State of :func:`average_iterates`."""

  inner_state: Any  #: state of the wrapped transformation.
  count: jax.Array  #: int32: number of updates averaged.
  #: The average of the params after each update (float32 or wider); ``()`` with ``offset_dtype``.
  averaged_params: Any
  #: With ``offset_dtype``: the average's offset from the params after the latest update,
  #: ``bar x_t - x_t``, in that dtype; ``()`` otherwise.
  offset: Any


def average_iterates(
  inner: optax.GradientTransformation,
  *,
  power: jax.typing.ArrayLike = 7.0,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
  offset_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Keep the polynomial-decay average of the iterates of any transformation.

  The updates are ``inner``'s, unchanged; the state also keeps the average of the params after
  each update, ``x_t = params + updates``:

  .. math::

    \bar x_t = (1 - c_t)\, \bar x_{t-1} + c_t\, x_t, \qquad c_t = \frac{p + 1}{t + p},

  so ``bar x_t`` weighs ``x_s`` by ``Gamma(s + p) / Gamma(s)``, about ``s^p`` (Shamir & Zhang's
  polynomial-decay averaging): ``p = 0`` is the uniform (Polyak-Ruppert) average, and with the
  default ``p = 7`` the last quarter of the run carries 90% of the weight, the last tenth 57%.
  The average forgets the start at the pace of the run itself, with no horizon to set. Under
  minibatch noise it does what a decaying learning rate does at the end of a schedule: it
  averages the noise away while training continues at the full rate. Evaluate (and deploy) the
  average, read with :func:`averaged_params`; keep training the params themselves.

  Put it inside :func:`stop_when`: a skipped (non-finite) step then leaves the average as it was.

  Memory: one parameter-sized buffer, in ``accumulator_dtype`` (default: the params' dtype, but
  at least float32, since the average's increments shrink like ``p / t``).

  The average as an offset (``offset_dtype``): the average itself cannot live in a low
  precision, since its late increments ``c_t (x_t - bar x_{t-1})`` are far below the resolution
  of the params' magnitude. Its offset from the params, ``delta_t = bar x_t - x_t``, can: it is
  about the size of a few steps, so rounding it to bfloat16 errs by a few thousandths of the
  distance between the average and the params, not of the params. It follows from the update
  ``u_t = x_t - x_{t-1}`` alone,

  .. math::

    \delta_t = (1 - c_t)\,(\delta_{t-1} - u_t), \qquad \delta_1 = 0,

  computed in float32 and stored in ``offset_dtype`` (half a parameter-sized float32 buffer in
  bfloat16). Reading it back needs the params the update was applied to:
  ``averaged_params(state, params)``.

  Args:
    inner: the transformation whose iterates are averaged.
    power: the exponent ``p >= 0`` of the weights.
    accumulator_dtype: dtype of the average; ``None`` for the params' dtype promoted to at least
      float32.
    offset_dtype: keep the average as its offset from the params, in this dtype (e.g.
      ``jnp.bfloat16``; see above), instead of the average itself; ``None`` for the average.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.average_iterates(optax.sgd(0.1), power=0.0)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for _ in range(4):  # x_t = 0.1 t, t = 1..4; their mean is 0.25
    ...   updates, state = tx.update(-jnp.ones(2), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(jnp.round(nag_optax.averaged_params(state), 4))
    [0.25 0.25]

  References:
    Shamir & Zhang, `Stochastic gradient descent for non-smooth optimization: convergence
    results and optimal averaging schemes <https://arxiv.org/abs/1212.1824>`_, ICML 2013.

    Polyak & Juditsky, `Acceleration of stochastic approximation by averaging
    <https://doi.org/10.1137/0330046>`_, 1992.
  """
  validation.check_transformation("inner", inner, example="optax.sgd(0.1)")
  validation.check_range("power", power, low=0.0)
  validation.check_float_dtype("accumulator_dtype", accumulator_dtype)
  validation.check_float_dtype("offset_dtype", offset_dtype)
  if offset_dtype is not None and accumulator_dtype is not None:
    raise ValueError(
      "accumulator_dtype is the dtype of the average itself, offset_dtype that of its offset "
      "from the params: pass one of them."
    )
  inner = optax.with_extra_args_support(inner)

  def average_dtype(leaf):
    if accumulator_dtype is not None:
      return jnp.dtype(accumulator_dtype)
    return jnp.promote_types(jnp.asarray(leaf).dtype, jnp.float32)

  def init_fn(params):
    params = validation.as_arrays(params)
    validation.check_float_params(params)
    if offset_dtype is not None:
      return AverageIteratesState(
        inner_state=inner.init(params),
        count=jnp.zeros((), jnp.int32),
        averaged_params=(),
        offset=optax.tree.zeros_like(params, dtype=jnp.dtype(offset_dtype)),
      )
    return AverageIteratesState(
      inner_state=inner.init(params),
      count=jnp.zeros((), jnp.int32),
      averaged_params=jax.tree.map(lambda x: jnp.asarray(x).astype(average_dtype(x)), params),
      offset=(),
    )

  def update_fn(updates, state, params=None, **extra_args):
    updates, params = validation.updates_and_params(updates, params)
    validation.require_params(params, "average_iterates", "it averages params + updates")
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    count = jnp.asarray(optax.safe_increment(state.count))
    dtype = numerics.scalar_dtype(params if offset_dtype is not None else state.averaged_params)
    p = jnp.asarray(power).astype(dtype)
    weight = (p + 1.0) / (count.astype(dtype) + p)  # 1 at the first update

    if offset_dtype is not None:

      def shift(offset, u):
        acc = jnp.promote_types(u.dtype, jnp.float32)
        kept = (1.0 - weight).astype(acc)
        return (kept * (offset.astype(acc) - u.astype(acc))).astype(offset.dtype)

      offset = jax.tree.map(shift, state.offset, new_updates)
      return new_updates, AverageIteratesState(inner_state, count, (), offset)

    def mix(avg, x, u):
      x_new = x.astype(avg.dtype) + u.astype(avg.dtype)
      return avg + weight.astype(avg.dtype) * (x_new - avg)

    averaged = jax.tree.map(mix, state.averaged_params, params, new_updates)
    return new_updates, AverageIteratesState(inner_state, count, averaged, ())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def averaged_params(state: Any, params: Any = None) -> Any:
  """The average kept by :func:`average_iterates` (e.g. inside :func:`auto_nadamw`), found
  anywhere in an optimizer state (through ``stop_when``, ``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, Flax NNX's ``optimizer.opt_state``).

  Evaluate the model at these params. With ``params`` given (the current training params: a tree
  with the same leaves under the same names, checked) each leaf is cast to the dtype of the
  matching leaf, so the average drops into the model: with Flax NNX,
  ``nnx.update(eval_model, averaged_params(optimizer.opt_state, nnx.state(model, nnx.Param)))``.
  Flax NNX's variable boxes are unwrapped to arrays.

  An average kept as its offset from the params (``offset_dtype``, as in :func:`auto_nadamw`)
  needs ``params``: it is ``params + offset``.

  Raises:
    ValueError: the state holds no average, or more than one, or ``params`` is not shaped as it,
      or it is missing where the average is kept as an offset.

  Examples:
    >>> import jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.stop_when(nag_optax.average_iterates(optax.sgd(0.1)))  # found inside
    >>> params = {"w": jnp.ones(2, jnp.bfloat16)}
    >>> state = tx.init(params)
    >>> print(nag_optax.averaged_params(state)["w"].dtype,
    ...       nag_optax.averaged_params(state, params)["w"].dtype)
    float32 bfloat16
  """
  states = numerics.find_states(state, AverageIteratesState)
  if len(states) == 1 and jax.tree.leaves(states[0].offset):
    return _average_from_offset(states[0].offset, params)
  found = [s.averaged_params for s in states]
  if not found:
    raise ValueError(
      "the optimizer state holds no iterate average: build the optimizer with "
      "nag_optax.average_iterates(...) (auto_nadamw() includes one by default)."
    )
  if len(found) > 1:
    raise ValueError(f"the optimizer state holds {len(found)} iterate averages; expected one.")
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(
    found[0], is_leaf=numerics.is_box
  )
  leaves = [numerics.unbox(x) for _, x in paths_and_leaves]
  if params is not None:
    like = jax.tree_util.tree_flatten_with_path(params, is_leaf=numerics.is_box)[0]
    _check_names(like, paths_and_leaves)
    leaves = [a.astype(jnp.asarray(numerics.unbox(x)).dtype) for a, (_, x) in zip(leaves, like)]
  return jax.tree.unflatten(treedef, leaves)


def _average_from_offset(offset: Any, params: Any) -> Any:
  """``params + offset`` (the average kept as its offset), cast to the params' dtypes."""
  if params is None:
    raise ValueError(
      "this optimizer keeps the average as its offset from the params (offset_dtype): pass the "
      "current params, averaged_params(state, params)."
    )
  paths_and_offsets, treedef = jax.tree_util.tree_flatten_with_path(offset, is_leaf=numerics.is_box)
  like = jax.tree_util.tree_flatten_with_path(params, is_leaf=numerics.is_box)[0]
  _check_names(like, paths_and_offsets)

  def add(x, d):
    x, d = jnp.asarray(numerics.unbox(x)), numerics.unbox(d)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return (x.astype(acc) + d.astype(acc)).astype(x.dtype)

  return jax.tree.unflatten(treedef, [add(x, d) for (_, x), (_, d) in zip(like, paths_and_offsets)])


def _check_names(like: list, expected: list) -> None:
  if [_keys(p) for p, _ in like] != [_keys(p) for p, _ in expected]:
    raise ValueError(
      "params must have the structure of the averaged params (the params the optimizer "
      f"trains): got leaves at {[jax.tree_util.keystr(p) for p, _ in like]}, the average has "
      f"them at {[jax.tree_util.keystr(p) for p, _ in expected]}."
    )


def _keys(path) -> tuple:
  """A leaf's path as plain keys, so that a dict and a Flax NNX ``State`` with the same names
  (the training params and the average kept in ``nnx.Optimizer``'s state) compare equal."""
  out = []
  for entry in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        out.append(getattr(entry, attribute))
        break
    else:
      out.append(str(entry))
  return tuple(out)
