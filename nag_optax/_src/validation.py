"""Construction-time checks of hyperparameters.

Static configuration (strings, ints, dtypes) is always checked. Numeric hyperparameters
are checked only when they are concrete numbers: under ``optax.inject_hyperparams`` or
``jax.jit`` they arrive as tracers and are left alone.
"""

import functools
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Optional
from typing import ParamSpec
from typing import TypeVar

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

INT32_MAX = 2**31 - 1

_P = ParamSpec("_P")
_R = TypeVar("_R")


def is_concrete_number(x: Any) -> bool:
  """True for a Python/NumPy number or a concrete 0-d array: a value we may inspect."""
  if isinstance(x, bool):
    return False
  if isinstance(x, (int, float, np.number)):
    return True
  if isinstance(x, jax.core.Tracer):
    return False
  if isinstance(x, (jax.Array, np.ndarray)) and np.ndim(x) == 0:
    return True
  return False


def check_real(name: str, value: Any) -> None:
  """Raise TypeError naming ``name`` for a string, bool, complex number, ``None``, list or tuple
  where a real number belongs, and ValueError for a concrete array that is not a scalar.

  Tracers, callables (schedules) and real numbers or 0-d arrays pass.
  """
  if value is None or isinstance(value, (list, tuple)):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
  concrete_array = isinstance(value, (np.ndarray, jax.Array)) and not isinstance(
    value, jax.core.Tracer
  )
  if concrete_array and np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}.")
  bad = isinstance(value, (str, bytes, bool, np.bool_, complex, np.complexfloating))
  if concrete_array:
    bad |= value.dtype == bool or jnp.issubdtype(value.dtype, jnp.complexfloating)
  if bad:
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed!r}, got {value!r}.")


def check_range(
  name: str,
  value: Any,
  *,
  low: Optional[float] = None,
  high: Optional[float] = None,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
  allow_none: bool = False,
) -> None:
  """Raise ValueError naming ``name`` if a concrete ``value`` lies outside the range.

  NaN and infinities are always rejected; strings, bools and complex numbers raise TypeError.
  Callables (schedules) and tracers are not checked; ``None`` passes where ``allow_none``.
  """
  if value is None and allow_none:
    return
  check_real(name, value)  # None raises here
  assert value is not None
  if callable(value) or not is_concrete_number(value):
    return
  v = float(value)
  bad = not np.isfinite(v)
  if low is not None:
    bad |= v < low if low_inclusive else v <= low
  if high is not None:
    bad |= v > high if high_inclusive else v >= high
  if np.isnan(v) or bad:
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    interval = ("[" if low_inclusive else "(") + f"{lo}, {hi}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must lie in {interval}, got {value!r}.")


def check_int(name: str, value: Any, *, low: int = 0, allow_none: bool = True) -> None:
  """Integer hyperparameters may be traced too (``inject_hyperparams`` injects every number)."""
  if value is None and allow_none:
    return
  if isinstance(value, jax.core.Tracer):
    return
  if value is not None:
    check_real(name, value)
  is_int = isinstance(value, (int, np.integer)) or (
    isinstance(value, (jax.Array, np.ndarray))
    and np.ndim(value) == 0
    and jnp.issubdtype(value.dtype, jnp.integer)
  )
  if value is None or isinstance(value, bool) or not is_int or value < low:
    raise ValueError(
      f"{name} must be an integer >= {low}"
      + (" or None" if allow_none else "")
      + f", got {value!r}."
    )
  if value > INT32_MAX:  # step counts live in int32 state
    raise ValueError(f"{name} must be at most 2**31 - 1 = {INT32_MAX}, got {value!r}.")


def check_transformation(name: str, value: Any, *, example: str, allow_none: bool = False) -> None:
  """Raise TypeError naming ``name`` unless ``value`` has callable ``init`` and ``update`` (an
  Optax transformation); a factory passed uncalled gets the hint to call it, as ``example``.
  ``None`` passes where ``allow_none``."""
  if value is None and allow_none:
    return
  if callable(getattr(value, "init", None)) and callable(getattr(value, "update", None)):
    return
  hint = f" (call the factory: e.g. {example})" if callable(value) else ""
  raise TypeError(
    f"{name} must be an optax GradientTransformation (with init and update)"
    f"{' or None' if allow_none else ''}, got {type(value).__name__}{hint}."
  )


def require_params(params: Any, who: str, reason: str) -> None:
  """Raise ValueError when an update that reads ``params`` got none, saying why it needs them."""
  if params is None:
    raise ValueError(
      f"{who} needs params ({reason}): call update(updates, state, params), as Optax loops and "
      "Flax NNX's optimizer.update do."
    )


def check_float_dtype(name: str, value: Any) -> None:
  if value is None:
    return
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"{name} must be a floating dtype or None, got {value!r}.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype or None, got {value!r}.")


def as_arrays(tree: Any) -> Any:
  """``tree`` with every leaf that is not a JAX array (a Python float, a NumPy array) made one,
  of its NumPy dtype.

  Optax's transformations take ``params = 1.0``, and ``minimize(loss, 0.0)`` a Python start;
  this lets the package's do the same (array leaves, tracers included, pass through untouched).
  """
  return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(np.asarray(x)), tree)


def updates_and_params(updates: Any, params: Any) -> tuple:
  """``(updates, params)`` as arrays (:func:`as_arrays`), checked to match leaf by leaf.

  Raises ValueError naming both arguments when ``params`` does not have the structure of
  ``updates`` (the gradients of the params) or a leaf's shape differs, instead of a broadcasting
  error deep inside an update. Checked from structures and shapes only, so it works under ``jit``.
  """
  updates, params = as_arrays(updates), as_arrays(params)
  if params is None:
    return updates, params
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
  try:
    param_leaves = treedef.flatten_up_to(params)
  except (ValueError, TypeError):
    raise ValueError(
      "updates and params must be trees of the same structure (updates are the gradients of "
      f"the params); got updates {treedef} and params {jax.tree.structure(params)}."
    ) from None
  for (path, u), p in zip(paths_and_leaves, param_leaves):
    # u is an array (as_arrays); p may be a subtree where params box a leaf (no shape: unchecked).
    p_shape = getattr(p, "shape", None)
    if p_shape is not None and u.shape != tuple(p_shape):
      where = jax.tree_util.keystr(path) or "the root"
      raise ValueError(
        f"updates and params must have the same shapes; at {where} updates have shape "
        f"{u.shape} and params {tuple(p_shape)}."
      )
  return updates, params


def check_float_params(params: Any) -> None:
  """Raise TypeError naming the first leaf of ``params`` that is not a floating-point array.

  Integer (or bool, complex) parameters cannot take a gradient step: an update would be
  truncated or wrap around. Checked at ``init`` from dtypes only, so it works under ``jit``.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      where = jax.tree_util.keystr(path) or "params"
      raise TypeError(
        f"params must be floating-point arrays; the leaf {where} has dtype "
        f"{dtype}. Cast it (e.g. jnp.asarray(x, jnp.float32)) or keep it out of "
        "the optimized tree (optax.masked / nnx.Param filters)."
      )


def keyword_only(hint: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
  """A factory whose arguments are keyword-only, with a TypeError that says why (``hint``) when
  it is called with positional ones (a number passed positionally may mean something else to
  a reader used to another optimizer's signature)."""

  def decorate(factory: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(factory)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
      if args:
        given = ", ".join(repr(a) for a in args)
        raise TypeError(
          f"{getattr(factory, '__name__', 'this factory')}() takes keyword arguments only, got "
          f"positional {given}. {hint}"
        )
      return factory(*args, **kwargs)  # no positional ones here

    return wrapper

  return decorate


def check_static(name: str, value: Any) -> None:
  """Raise TypeError for an argument that sizes state arrays but arrives as an array (traced,
  or injected by ``optax.inject_hyperparams``): it must be a Python number."""
  if isinstance(value, (jax.Array, np.ndarray)):
    raise TypeError(
      f"{name} sets the size of a state array and cannot be an array or traced: pass a Python "
      f"int (under optax.inject_hyperparams, in static_args=({name!r},))."
    )
