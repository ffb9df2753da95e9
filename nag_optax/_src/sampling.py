"""A fixed subsample of coordinates, for statistics that need only a few scalars per step.

The distance estimate of :func:`scale_by_distance` reads two global sums per step. Summed over a
fixed ``1/k`` of the coordinates of each large leaf and scaled by the leaf's size over the
sample's, they estimate the full sums while the buffers they need shrink ``k``-fold.

Which coordinates: every ``p``-th index along the leaf's leading axis that has at least ``p``
indices (its longest axis where none has), ``p`` the smallest prime not below ``k``. Whole
slices of the row-major leaf are contiguous memory, where scattered elements would have every
cache line read; a strided slice of a sharded leaf stays on each shard, where a flattened leaf
would be gathered; and a prime stride does not align with the power-of-two or image-width
periods that an input axis often has (every 16th input pixel of 8-pixel-wide images is always the
same column). Leaves of fewer than ``MIN_SAMPLED_SIZE`` elements are taken whole: they cost
little memory, and a few slices of them would be a poor sample; they are flattened into one
vector (at least float32), so that a model of many small leaves keeps two state leaves for the
estimate, not two per leaf, and sums them in one reduction each (Flax NNX pays per state leaf on
every jitted call, XLA per kernel). A sharded small leaf is gathered into that vector: at most
``MIN_SAMPLED_SIZE`` elements.
"""

import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics

# Leaves smaller than this are summed whole (2**16 float32 elements: 256 KiB).
MIN_SAMPLED_SIZE = 2**16


def stride(subsample: int) -> int:
  """The sample's stride for about one coordinate in ``subsample``: the smallest prime
  ``>= subsample`` (1 for 1)."""
  p = max(int(subsample), 1)
  while p > 2 and any(p % q == 0 for q in range(2, math.isqrt(p) + 1)):
    p += 1
  return p


def axis(shape: tuple, step: int) -> int:
  """The axis a leaf of ``shape`` is sampled along: the first with at least ``step`` indices,
  else the longest (the first of equals)."""
  for i, n in enumerate(shape):
    if n >= step:
      return i
  return max(range(len(shape)), key=lambda i: (shape[i], -i))


def _sampled(shape: tuple, step: int) -> bool:
  return step > 1 and len(shape) > 0 and math.prod(shape) >= MIN_SAMPLED_SIZE


class Sample(NamedTuple):
  """The sample of a tree of leaves: what :func:`sample` returns for ``subsample > 1``."""

  #: The tree's structure, each large leaf replaced by its every ``stride``-th slice and each small
  #: one by ``optax.MaskedNode()`` (an empty node), so that ``optax.tree.map_params`` pairs the
  #: slices with the params they sample (pass it ``is_leaf=lambda v: isinstance(v,
  #: optax.MaskedNode)`` with extra trees such as partition specs, as for ``optax.masked``).
  large: Any
  #: Every small leaf flattened, in leaf order, in at least float32 (shape ``(0,)`` if none).
  small: jax.Array


def sample(tree: Any, subsample: int) -> Any:
  """The sample of ``tree`` (see the module): ``tree`` itself for ``subsample = 1``, else a
  :class:`Sample`. Its leaves are each large leaf's slices, in leaf order, then the vector of
  the small leaves; the structure depends on the tree's only through the tree's own structure
  (so ``optax.tree.map_params`` can place it)."""
  step = stride(subsample)
  if step == 1:
    return tree

  def large(x):
    x = numerics.unbox(x)
    if not _sampled(x.shape, step):
      return optax.MaskedNode()
    index = [slice(None)] * x.ndim
    index[axis(x.shape, step)] = slice(None, None, step)
    return x[tuple(index)]

  leaves = [numerics.unbox(x) for x in jax.tree.leaves(tree, is_leaf=numerics.is_box)]
  small = [x for x in leaves if not _sampled(x.shape, step)]
  dtype = jnp.result_type(jnp.float32, *(x.dtype for x in small))
  flat = [jnp.ravel(x).astype(dtype) for x in small]
  vector = jnp.concatenate(flat) if flat else jnp.zeros((0,), dtype)
  return Sample(large=jax.tree.map(large, tree, is_leaf=numerics.is_box), small=vector)


def weights(tree: Any, subsample: int) -> list:
  """Per leaf of :func:`sample` (per leaf of ``tree`` for ``subsample = 1``), its size over its
  sample's: the factor that turns a sum over that leaf into an estimate of the sum over what it
  samples (1 for whole leaves and the small leaves' vector)."""
  step = stride(subsample)
  leaves = jax.tree.leaves(tree)
  if step == 1:
    return [1.0] * len(leaves)
  out = []
  for x in leaves:
    shape = tuple(x.shape)
    if _sampled(shape, step):
      i = axis(shape, step)
      sampled = shape[:i] + (-(-shape[i] // step),) + shape[i + 1 :]
      out.append(math.prod(shape) / math.prod(sampled))
  out.append(1.0)  # the small leaves' vector, whole
  return out
