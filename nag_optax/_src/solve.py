"""``minimize``: a jit-compiled solver loop that runs an optimizer until its stopping signal."""

import functools
import warnings
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax._src import alias
from nag_optax._src import numerics
from nag_optax._src import stopping
from nag_optax._src import validation


class Solution(NamedTuple):
  """Result of :func:`minimize` (a pytree: works under ``jit`` and ``vmap``)."""

  params: optax.Params  #: the final iterate.
  state: optax.OptState  #: the optimizer state at the end.
  value: jax.Array  #: loss at ``params``.
  grad_norm: jax.Array  #: ``||grad||`` at ``params``.
  steps: jax.Array  #: int32: updates applied (non-finite steps skipped by the guard excluded).
  reason: jax.Array  #: int32 StopReason code; MAX_STEPS when the loop ran out.
  aux: Any = None  #: auxiliary output of ``fun`` at ``params`` when ``has_aux``.

  def __repr__(self) -> str:
    reason = self.stop_reason
    if isinstance(reason, stopping.StopReason):
      return (
        f"Solution({reason.name}: {reason.description}; steps={int(self.steps)}, "
        f"value={float(self.value):.6g}, grad_norm={float(self.grad_norm):.3g}, "
        f"params={jax.tree.map(lambda x: getattr(x, 'shape', ()), self.params)})"
      )
    # A batched solution; inside jit its reasons are the int32 codes and its steps are traced.
    names = reason if isinstance(reason, jax.Array) else [r.name for r in np.ravel(reason)]
    traced = isinstance(self.steps, jax.core.Tracer)
    steps = self.steps if traced else np.asarray(self.steps).tolist()
    return f"Solution(batched {np.shape(self.reason)}: reasons {names}, steps={steps})"

  @property
  def stop_reason(self):
    """``reason`` as a :class:`StopReason`; for a batched (vmapped) solution, a NumPy object
    array of them with the batch shape; inside ``jit`` (a traced solution), the int32 codes."""
    return stopping.reasons_from_codes(self.reason)


def _has_stop_state(optimizer, params) -> bool:
  state = jax.eval_shape(optimizer.init, params)
  try:
    stopping.stop_states(state)
    return True
  except ValueError:
    return False


class ProgressBar:
  """A ``callback`` for :func:`minimize` that drives a tqdm bar; ``close()`` closes the bar."""

  def __init__(self, bar: Any):
    self._bar = bar

  def __call__(self, step: jax.Array, value: jax.Array, grad_norm: jax.Array) -> None:
    self._bar.n = int(step)
    self._bar.set_postfix(
      loss=f"{float(value):.3e}", grad_norm=f"{float(grad_norm):.2e}", refresh=False
    )
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


def progress_bar(max_steps: int, **tqdm_kwargs: Any) -> ProgressBar:
  """A ``callback`` for :func:`minimize` that drives a tqdm progress bar (tqdm must be installed).

  Examples:
    >>> import jax.numpy as jnp, nag_optax
    >>> bar = nag_optax.progress_bar(1000, disable=True)
    >>> sol = nag_optax.minimize(lambda x: jnp.sum(x ** 2), jnp.ones(3), callback=bar)
  """
  try:
    from tqdm.auto import tqdm  # pyright: ignore[reportMissingModuleSource] (no type stubs)
  except ImportError as e:
    raise ImportError("progress_bar needs tqdm: pip install tqdm") from e
  return ProgressBar(tqdm(total=max_steps, **tqdm_kwargs))


def minimize(
  fun: Callable[..., Any],
  params: optax.Params,
  optimizer: Optional[optax.GradientTransformation] = None,
  *,
  max_steps: int = 10_000,
  has_aux: bool = False,
  args: tuple[Any, ...] = (),
  gtol: Optional[float] = None,
  rtol: Optional[float] = None,
  ftol: Optional[float] = None,
  xtol: Optional[float] = None,
  callback: Optional[Callable[[jax.Array, jax.Array, jax.Array], Any]] = None,
  callback_every: int = 100,
) -> Solution:
  r"""Minimise ``fun`` with an Optax optimizer inside one ``jax.lax.while_loop``.

  Each iteration evaluates ``value, grad = value_and_grad(fun)(params, *args)`` and calls
  ``optimizer.update(grad, state, params, value=value, grad=grad, value_fn=...)`` (so line
  searches work), until the optimizer's stopping signal (:func:`stop_when`) fires or
  ``max_steps`` updates have been applied. The default optimizer is :func:`auto_nag`.

  Tolerances given here wrap ``optimizer`` in :func:`stop_when`; an optimizer that already has a
  stopping signal keeps its own (passing tolerances too is an error). A plain optimizer without a
  signal and without tolerances runs for ``max_steps``, guarded against non-finite steps.

  Under ``jax.vmap`` (a batch of problems) each problem stops at its own step: a stopped problem
  receives zero updates while the others go on.

  Args:
    fun: the loss ``fun(params, *args) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
    params: the starting point, any pytree of float arrays (Python floats become arrays).
    optimizer: an Optax transformation; ``None`` for ``auto_nag()``.
    max_steps: the most updates to apply.
    has_aux: whether ``fun`` returns ``(value, aux)``.
    args: extra positional arguments for ``fun``, a tuple; anything else is passed as the one
      extra argument (as in ``scipy.optimize.minimize``).
    gtol, rtol, ftol, xtol: tolerances for :func:`stop_when` (see there).
    callback: ``callback(step, value, grad_norm)``, called on the host every ``callback_every``
      steps through ``jax.debug.callback``; ``None`` (the default) adds nothing to the loop.
    callback_every: the period of ``callback`` in steps.

  Returns:
    A :class:`Solution`.

  Examples:
    >>> import jax.numpy as jnp, nag_optax
    >>> def loss(x, a):
    ...   return jnp.sum(a * (x - 1.0) ** 2)
    >>> sol = nag_optax.minimize(loss, jnp.zeros(3), args=(jnp.array([1.0, 10.0, 100.0]),),
    ...                          rtol=1e-6)
    >>> print(jnp.round(sol.params, 3), sol.stop_reason.name)
    [1. 1. 1.] RTOL
  """
  validation.check_int("max_steps", max_steps, low=0, allow_none=False)
  validation.check_int("callback_every", callback_every, low=1, allow_none=False)
  if not callable(fun):
    raise ValueError(f"fun must be callable, got {type(fun).__name__}.")
  for name, tol in (("gtol", gtol), ("rtol", rtol), ("ftol", ftol), ("xtol", xtol)):
    if tol is not None:
      validation.check_range(name, tol, low=0.0)
  if optimizer is not None:
    validation.check_transformation("optimizer", optimizer, example="nag_optax.auto_nag()")
  if not isinstance(args, tuple):  # as scipy.optimize.minimize: anything else is one argument
    args = (args,)
  # Python scalars (minimize(loss, 0.0), a list of floats) become arrays of their NumPy dtype.
  params = validation.as_arrays(params)
  _check_initial_params(params)
  if optimizer is None:
    _warn_if_below_resolution(
      params,
      rtol
      if rtol is not None
      else (None if any(t is not None for t in (gtol, ftol, xtol)) else stopping.DEFAULT_RTOL),
      "rtol",
    )
  key = (fun, optimizer, has_aux, max_steps, gtol, rtol, ftol, xtol, callback, callback_every)
  try:
    run = _compiled_loop(*key)
  except TypeError:  # an unhashable fun or callback: build the loop for this call only
    run = _compiled_loop.__wrapped__(*key)
  return run(params, args)


def _check_initial_params(params) -> None:
  """Concrete initial params must be finite floats (a NaN start can only end in NONFINITE)."""
  validation.check_float_params(params)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if isinstance(leaf, jax.core.Tracer):
      continue
    if not bool(jnp.all(jnp.isfinite(leaf))):
      where = jax.tree_util.keystr(path) or "params"
      raise ValueError(f"params must be finite; the leaf {where} holds NaN or inf.")


def _warn_if_below_resolution(params, rtol, name) -> None:
  """Warn when a relative tolerance is finer than the params' floating-point resolution."""
  if rtol is None:
    return
  coarsest = max(
    (
      float(jnp.finfo(leaf.dtype).eps)
      for leaf in jax.tree.leaves(params)
      if jnp.issubdtype(leaf.dtype, jnp.floating)
    ),
    default=0.0,
  )
  if 0 < rtol < coarsest:
    warnings.warn(
      f"{name}={rtol:g} is below the resolution of the params' dtype (machine "
      f"epsilon {coarsest:.1e}): the gradient may never get that small relative to "
      f"its start, and the loop may run to max_steps. Use float32 params (keep "
      f"bfloat16 for the model's compute) or {name} >= {coarsest:.0e}.",
      stacklevel=3,
    )


@functools.lru_cache(maxsize=64)
def _compiled_loop(
  fun, optimizer, has_aux, max_steps, gtol, rtol, ftol, xtol, callback, callback_every
):
  """The jitted solver loop for one configuration, cached: a second :func:`minimize` with the
  same function, optimizer and settings reuses the compiled loop (for the same shapes)."""
  tolerances = dict(gtol=gtol, rtol=rtol, ftol=ftol, xtol=xtol)
  given = {k: v for k, v in tolerances.items() if v is not None}
  if optimizer is None:
    # Tolerances given here replace auto_nag's default rtol rather than adding to it.
    optimizer = alias.auto_nag(**{"rtol": None, **given}) if given else alias.auto_nag()
    given = {}

  @jax.jit
  def run(params, args):
    opt = optimizer
    if _has_stop_state(opt, params):
      if given:
        raise ValueError(
          f"optimizer already has a stopping signal; pass {sorted(given)} to its "
          "stop_when(...) (or auto_nag(...)) instead of to minimize."
        )
    else:
      opt = stopping.stop_when(opt, max_steps=max_steps, **given)
    return _loop(fun, opt, params, args, has_aux, max_steps, callback, callback_every)

  return run


def _loop(fun, optimizer, params, args, has_aux, max_steps, callback, callback_every):
  """The ``lax.while_loop`` of :func:`minimize` (traced inside its jitted ``run``)."""

  def value_fn(p):
    out = fun(p, *args)
    return out[0] if has_aux else out

  returned = jax.eval_shape(lambda p: fun(p, *args), params)  # at trace time only
  if has_aux and not (isinstance(returned, (tuple, list)) and len(returned) == 2):
    raise ValueError(
      "with has_aux=True fun must return a pair (loss, aux); it returned "
      f"{type(returned).__name__}."
    )
  if not has_aux and not hasattr(returned, "shape"):
    raise ValueError(
      f"fun must return a scalar loss; it returned a {type(returned).__name__}. If it returns "
      "(loss, aux), pass has_aux=True."
    )
  shape = getattr(returned[0] if has_aux else returned, "shape", None)
  if shape != ():
    raise ValueError(
      f"fun must return a scalar loss (with has_aux=True: (loss, aux)); it "
      f"returned shape {shape}. Reduce it, e.g. with jnp.mean."
    )
  value_and_grad = jax.value_and_grad(fun, has_aux=has_aux)

  def evaluate(p):
    out, grad = value_and_grad(p, *args)
    value, aux = out if has_aux else (out, None)
    return value, aux, grad

  def cond(carry):
    iteration, _, state, _ = carry
    return (iteration < max_steps) & ~stopping.should_stop(state)

  def body(carry):
    iteration, p, state, last_good = carry
    value, _, grad = evaluate(p)
    updates, new_state = optimizer.update(grad, state, p, value=value, grad=grad, value_fn=value_fn)
    if callback is not None:
      grad_norm = numerics.norm(grad)
      jax.lax.cond(
        iteration % callback_every == 0,
        lambda: jax.debug.callback(callback, iteration, value, grad_norm),
        lambda: None,
      )
    finite = jnp.isfinite(value) & numerics.all_finite(grad)
    last_good = optax.tree.where(finite, p, last_good)
    return iteration + 1, optax.apply_updates(p, updates), new_state, last_good

  state = optimizer.init(params)
  carry0 = (jnp.zeros((), jnp.int32), params, state, params)
  iterations, params, state, last_good = jax.lax.while_loop(cond, body, carry0)
  stop_state = stopping.stop_states(state)[0]
  reason = jnp.where(
    stop_state.reason == stopping.StopReason.NOT_STOPPED,
    jnp.int32(stopping.StopReason.MAX_STEPS),
    stop_state.reason,
  )
  # A step can land where the loss is not finite; the guard then skips every later step. Return
  # the last point whose loss and gradient were finite instead of the non-finite one.
  params = optax.tree.where(reason == stopping.StopReason.NONFINITE, last_good, params)
  value, aux, grad = evaluate(params)
  steps = stop_state.count
  if callback is not None:
    jax.debug.callback(callback, iterations, value, numerics.norm(grad))
  return Solution(
    params=params,
    state=state,
    value=value,
    grad_norm=numerics.norm(grad, numerics.scalar_dtype(params)),
    steps=steps,
    reason=reason,
    aux=aux,
  )
