"""Dtype-preserving pytree arithmetic shared by the transformations.

Optax's ``optax.tree.scale`` multiplies by a raw scalar, so a float64 scalar (the
state's precision under ``jax_enable_x64``) would promote float32 or bfloat16 leaves.
Every scalar-times-tree product in this package goes through :func:`scale` so that
updates keep the dtype of the incoming updates, and every reduction through
:func:`norm` / :func:`vdot` / :func:`sums`, which accumulate in at least float32.
"""

import functools
import operator
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def scalar_dtype(tree: Any) -> jnp.dtype:
  """The dtype of the state's scalars: float64 if any leaf is float64, else float32."""
  dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(tree)]
  dtype = jnp.dtype(jnp.float32)
  for d in dtypes:
    if jnp.issubdtype(d, jnp.floating):
      dtype = jnp.promote_types(dtype, d)
  return dtype


def scale(scalar: Any, tree: Any) -> Any:
  """``scalar * tree`` with the scalar cast to each leaf's dtype."""
  return jax.tree.map(lambda x: jnp.asarray(scalar).astype(x.dtype) * x, tree)


def norm(tree: Any, dtype: Any = jnp.float32) -> jax.Array:
  """Global l2 norm over all leaves, accumulated in at least ``dtype``."""
  acc = jnp.promote_types(dtype, jnp.float32)
  (square,) = sums(lambda x: (x * x,), tree, dtype=acc)
  return jnp.sqrt(square).astype(dtype)


def vdot(tree_x: Any, tree_y: Any, dtype: Any = jnp.float32) -> jax.Array:
  """Global inner product over all leaves, accumulated in at least ``dtype``."""
  (dot,) = sums(lambda x, y: (x * y,), tree_x, tree_y, dtype=dtype)
  return dot


def sums(
  terms: Callable[..., Sequence[jax.Array]],
  *trees: Any,
  dtype: Any = jnp.float32,
  leaf_weights: Optional[Sequence[float]] = None,
) -> tuple[jax.Array, ...]:
  """Global sums of several elementwise terms of ``trees``' leaves.

  ``terms(*leaves)`` returns a sequence of arrays shaped like the leaves (the leaves are given
  in at least float32); each is summed over all elements of all leaves, accumulated in at least
  ``dtype``. Each term is its own full reduction (no reshape), so sharded leaves reduce across
  devices without being gathered. One variadic reduction would read the inputs once for all
  terms, but the SPMD partitioner gathers the operands of a variadic reduction. With
  ``leaf_weights`` (static numbers, one per leaf) each leaf's sums are multiplied by its weight
  (a weight of exactly 1 multiplies nothing).
  """
  acc = jnp.promote_types(dtype, jnp.float32)
  jax.tree.map(lambda *_: None, *trees)  # the trees' structures must match, as tree.map checks
  leaves = list(zip(*(jax.tree.leaves(t) for t in trees)))
  if not leaves:
    count = len(terms(*(jnp.zeros((), acc) for _ in trees)))
    return tuple(jnp.zeros((), dtype) for _ in range(count))
  per_leaf = [
    [jnp.sum(jnp.asarray(t, acc)) for t in terms(*(x.astype(acc) for x in xs))] for xs in leaves
  ]
  if leaf_weights is not None:
    per_leaf = [
      [s if w == 1 else jnp.asarray(w, acc) * s for s in column]
      for w, column in zip(leaf_weights, per_leaf, strict=True)
    ]
  return tuple(functools.reduce(operator.add, column).astype(dtype) for column in zip(*per_leaf))


def safe_div(
  numerator: jax.typing.ArrayLike, denominator: jax.Array, default: jax.typing.ArrayLike = 0.0
) -> jax.Array:
  """``numerator / denominator``, or ``default`` where the denominator is not positive or the
  quotient is not finite."""
  quotient = numerator / jnp.where(denominator > 0, denominator, jnp.ones_like(denominator))
  return jnp.where(
    (denominator > 0) & jnp.isfinite(quotient), quotient, jnp.asarray(default, quotient.dtype)
  )


def all_finite(tree: Any) -> jax.Array:
  """True when every element of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def find_states(tree: Any, cls: type) -> list:
  """Every node of type ``cls`` in a state tree, outermost first (searched like the leaves, so
  through tuples, named tuples, dicts and Flax NNX's state containers, and inside a packed state,
  a node with an ``unpacked()`` method: ``pack_state``'s)."""
  packed = lambda x: callable(getattr(x, "unpacked", None))
  found = []
  for node in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls) or packed(x)):
    if isinstance(node, cls):
      found.append(node)
    elif packed(node):
      found.extend(find_states(node.unpacked(), cls))
  return found


def is_box(x: Any) -> bool:
  """A framework's variable box around an array (Flax NNX keeps optimizer state in ``OptArray``
  variables, e.g. ``nnx.Optimizer(...).opt_state``)."""
  if isinstance(x, (jax.Array, np.ndarray)):
    return False
  return hasattr(x, "get_value") or hasattr(x, "value")


def unbox(x: Any) -> Any:
  """The array inside a variable box (:func:`is_box`); anything else passes through."""
  if not is_box(x):
    return x
  if hasattr(x, "get_value"):  # flax.nnx.Variable (its `.value` is deprecated)
    return x.get_value()
  return x.value


def pack_scalars(tree: Any) -> tuple:
  """The 0-d leaves of ``tree`` stacked into one vector per dtype (dtypes in name order): a state
  of many scalars as a few leaves, which is what Flax NNX pays for per jitted call. Read back
  with :func:`unpack_scalars`."""
  leaves = jax.tree.leaves(tree)
  if any(jnp.ndim(x) != 0 for x in leaves):
    raise ValueError("pack_scalars packs 0-d leaves only.")
  dtypes = sorted({jnp.asarray(x).dtype for x in leaves}, key=lambda d: d.name)
  return tuple(jnp.stack([jnp.asarray(x) for x in leaves if x.dtype == d]) for d in dtypes)


def unpack_scalars(packed: tuple, like: Any) -> Any:
  """The tree of :func:`pack_scalars`'s vectors, shaped as ``like`` (e.g. the state's
  ``jax.eval_shape``)."""
  leaves, treedef = jax.tree.flatten(like)
  dtypes = sorted({jnp.dtype(x.dtype) for x in leaves}, key=lambda d: d.name)
  position = {d: 0 for d in dtypes}
  out = []
  for x in leaves:
    d = jnp.dtype(x.dtype)
    out.append(packed[dtypes.index(d)][..., position[d]])
    position[d] += 1
  return jax.tree.unflatten(treedef, out)


def all_scalars(tree: Any) -> bool:
  """Whether every leaf of ``tree`` is 0-d (so :func:`pack_scalars` applies)."""
  return all(jnp.ndim(x) == 0 for x in jax.tree.leaves(tree))
