"""An optimizer state packed into one flat buffer per dtype: :func:`pack_state`.

Flax NNX's ``nnx.jit`` walks the optimizer state's variables on every call, at a cost per leaf:
on a small model that, not the arithmetic, is a step's cost (the design decisions page has the
measurement). A
chain of composable transformations keeps a count and a few statistics in each link, so
:func:`~nag_optax.auto_nadamw`'s state has 25 leaves on a two-leaf model where ``optax.adamw``'s
has 5. Packed, it has one per dtype.
"""

import importlib.util
import math
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax._src import numerics
from nag_optax._src import validation


class _Entry(NamedTuple):
  """Where one leaf of the inner state lives: its shape, its buffer and its slice there."""

  shape: tuple
  buffer: int
  start: int
  size: int


@jax.tree_util.register_pytree_node_class
class PackedState:
  """State of :func:`pack_state`: the inner state's leaves, raveled and concatenated into one
  buffer per dtype (``buffers``, in the order the dtypes first appear among the leaves). The
  layout (the inner state's tree structure and each leaf's shape and place) is static: it is the
  node's auxiliary data, not a leaf. :meth:`unpacked` rebuilds the inner state."""

  def __init__(self, buffers: tuple, layout: tuple):
    self.buffers = tuple(buffers)
    self.layout = layout

  def tree_flatten(self):
    return self.buffers, self.layout

  @classmethod
  def tree_unflatten(cls, layout, buffers):
    return cls(tuple(buffers), layout)

  def unpacked(self) -> Any:
    """The inner state (on batched buffers, each leaf batched alike; Flax NNX's variable boxes
    around the buffers are unwrapped)."""
    treedef, _, entries = self.layout
    buffers = [numerics.unbox(b) for b in self.buffers]
    leaves = []
    for entry in entries:
      buffer = buffers[entry.buffer]
      part = buffer[..., entry.start : entry.start + entry.size]
      leaves.append(part.reshape(buffer.shape[:-1] + entry.shape))
    return jax.tree.unflatten(treedef, leaves)

  def __repr__(self) -> str:
    return f"PackedState(buffers={self.buffers!r})"


def _register_with_flax_serialization() -> None:
  """Lets ``flax.serialization`` (``to_bytes`` / ``from_bytes``, msgpack checkpoints) write and
  restore a :class:`PackedState`: its buffers by index, the layout from the restore target.
  Done when :func:`pack_state` is called, where Flax is installed: not at import, so that
  importing nag_optax does not import Flax."""
  if importlib.util.find_spec("flax") is None:
    return
  from flax import serialization

  def to_state_dict(state):
    return {str(i): serialization.to_state_dict(b) for i, b in enumerate(state.buffers)}

  def from_state_dict(target, state_dict):
    buffers = tuple(
      serialization.from_state_dict(b, state_dict[str(i)]) for i, b in enumerate(target.buffers)
    )
    return PackedState(buffers, target.layout)

  serialization.register_serialization_state(
    PackedState, to_state_dict, from_state_dict, override=True
  )


def _pack(state: Any) -> Any:  # a PackedState; Any, as optax types a state
  # Framework boxes (Flax NNX variables around params-shaped parts) are unwrapped, so that the
  # layout holds arrays' structure only, as the gradients the updates see have it.
  state = jax.tree.map(numerics.unbox, state, is_leaf=numerics.is_box)
  leaves, treedef = jax.tree.flatten(state)
  dtypes: list = []
  for x in leaves:
    if jnp.dtype(x.dtype) not in dtypes:
      dtypes.append(jnp.dtype(x.dtype))
  parts: list = [[] for _ in dtypes]
  sizes = [0] * len(dtypes)
  entries = []
  for x in leaves:
    i = dtypes.index(jnp.dtype(x.dtype))
    size = math.prod(jnp.shape(x))
    entries.append(_Entry(tuple(jnp.shape(x)), i, sizes[i], size))
    sizes[i] += size
    parts[i].append(jnp.ravel(x))
  buffers = tuple(jnp.concatenate(p) for p in parts)
  return PackedState(buffers, (treedef, tuple(d.name for d in dtypes), tuple(entries)))


def pack_state(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner`` with its state packed into one flat buffer per dtype: the same updates, a state of
  a few leaves.

  For small models under Flax NNX's ``nnx.jit``, which pays per state leaf on every call:
  ``nnx.Optimizer(model, nag_optax.pack_state(nag_optax.auto_nadamw()), wrt=nnx.Param)`` keeps
  four leaves (float32, bfloat16, int32, bool) where the unpacked state keeps 25 on a two-leaf
  model. Each update unpacks the buffers (slices), runs ``inner`` and concatenates the new state
  into them again: the updates are ``inner``'s (the same arithmetic, which XLA may fuse
  differently: equal to rounding), and the concatenation writes the whole state once more per
  step. On a large model that copy, not the leaf count, is the cost, and a
  sharded state would be gathered into the buffers: leave those unpacked.

  :func:`~nag_optax.should_stop`, :func:`~nag_optax.stop_reason` and
  :func:`~nag_optax.averaged_params` find their states inside the packed one; anything else reads
  the inner state from :meth:`PackedState.unpacked` (e.g. ``optax.tree.get(state.unpacked(),
  "learning_rate")``). Checkpoints: Orbax, and ``flax.serialization``'s ``to_bytes`` /
  ``from_bytes`` with a restore target from ``init``. The layout is fixed by ``init``: the inner
  state must keep its structure, shapes and dtypes across updates, as every Optax state does.

  Args:
    inner: the transformation whose state is packed (extra arguments such as ``value`` are
      passed on to it).

  Returns:
    A ``GradientTransformationExtraArgs`` whose state is a :class:`PackedState`.

  Examples:
    >>> import jax, jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.pack_state(nag_optax.auto_nadamw())
    >>> state = tx.init({"w": jnp.ones((4, 1)), "b": jnp.zeros(1)})
    >>> [str(b.dtype) for b in jax.tree.leaves(state)]
    ['int32', 'float32', 'bfloat16', 'bool']
  """
  validation.check_transformation("inner", inner, example="nag_optax.auto_nadamw()")
  inner = optax.with_extra_args_support(inner)
  _register_with_flax_serialization()

  def init_fn(params):
    return _pack(inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if not isinstance(state, PackedState):
      raise TypeError(
        f"state must be the PackedState of pack_state's init, got {type(state).__name__}."
      )
    new_updates, inner_state = inner.update(updates, state.unpacked(), params, **extra_args)
    packed = _pack(inner_state)
    if packed.layout != state.layout:
      raise ValueError(
        "pack_state: the inner state changed its structure, shapes or dtypes in update; a "
        "packed state keeps the layout of init."
      )
    return new_updates, packed

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
