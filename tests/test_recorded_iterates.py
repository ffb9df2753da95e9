"""Every public optimizer's iterates against values recorded from an earlier version.

A refactoring must not change a single iterate: each case runs a few hundred jitted steps and
compares the whole trajectory (params after every step, and the iterate average where there is
one) bit for bit with ``recorded_iterates.npz``, recorded with the jax, jaxlib and CPU named in
it. Under other versions or another CPU, XLA may round differently, so the comparison there is to
a tolerance over the first 50 steps only.

Re-record (only when a change of iterates is intended, and say so in the commit):
``python -m tests.test_recorded_iterates [CASE ...]`` (the named cases, or every case).
"""

import hashlib
import os
import platform

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import contrib
from tests.x64 import enable_x64

RECORD_PATH = os.path.join(os.path.dirname(__file__), "recorded_iterates.npz")
STEPS = 300
CHECKPOINTS = (1, 2, 5, 10, 50, 100, 200, 300)


def _quadratic(dim=6, kappa=100.0):
  scales = np.geomspace(1.0, kappa, dim)
  target = np.linspace(-1.0, 2.0, dim)
  return lambda x: 0.5 * jnp.sum(jnp.asarray(scales, x.dtype) * (x - target.astype(x.dtype)) ** 2)


def _rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _noisy_tree_loss(params, step):
  """A minibatch-like loss on a two-leaf tree: a least-squares fit whose targets are redrawn
  (deterministically) at every step."""
  key = jax.random.fold_in(jax.random.PRNGKey(0), step)
  noise = 0.3 * jax.random.normal(key, (8,))
  w, b = params["w"], params["b"]
  features = jnp.linspace(-1.0, 1.0, 8 * 3).reshape(8, 3).astype(w.dtype)
  targets = (features @ jnp.array([1.0, -2.0, 0.5], w.dtype) + 0.3 + noise).astype(w.dtype)
  return jnp.mean((features @ w + b - targets) ** 2)


def _tree_start(dtype):
  return {"w": jnp.zeros(3, dtype), "b": jnp.zeros((), dtype)}


# name -> (optimizer factory, loss, start, float64?, extra args: "none" | "value" | "value_fn").
# A loss with two arguments is a minibatch loss of (params, step).
CASES = {
  "nag": (lambda: nag_optax.nag(0.005), _quadratic(), lambda d: jnp.zeros(6, d), False, "none"),
  "nag_convex_gradient_restart": (
    lambda: nag_optax.nag(0.005, schedule="convex", restart="gradient"),
    _quadratic(),
    lambda d: jnp.zeros(6, d),
    True,
    "none",
  ),
  "nag_adaptive_function_restart": (
    lambda: nag_optax.nag(0.005, schedule="adaptive", restart="function"),
    _quadratic(),
    lambda d: jnp.zeros(6, d),
    True,
    "value",
  ),
  "auto_nag_float64_quadratic": (
    nag_optax.auto_nag,
    _quadratic(kappa=1e4),
    lambda d: jnp.zeros(6, d),
    True,
    "value_fn",
  ),
  "auto_nag_float64_rosenbrock_gradient_only": (
    nag_optax.auto_nag,
    _rosenbrock,
    lambda d: jnp.array([-1.2, 1.0, -0.5, 0.3], d),
    True,
    "none",
  ),
  "auto_nag_float64_rosenbrock": (
    nag_optax.auto_nag,
    _rosenbrock,
    lambda d: jnp.array([-1.2, 1.0, -0.5, 0.3], d),
    True,
    "value_fn",
  ),
  "auto_nag_float32": (
    nag_optax.auto_nag,
    _quadratic(kappa=1e3),
    lambda d: jnp.zeros(6, d),
    False,
    "value_fn",
  ),
  "auto_nag_nesterov_float64": (
    lambda: nag_optax.auto_nag(method="nesterov"),
    _rosenbrock,
    lambda d: jnp.array([-1.2, 1.0, -0.5, 0.3], d),
    True,
    "none",
  ),
  "auto_nag_spectral": (
    lambda: nag_optax.auto_nag(method="spectral"),
    _quadratic(kappa=1e4),
    lambda d: jnp.zeros(6, d),
    True,
    "value_fn",
  ),
  "backtracking_chain": (
    lambda: optax.chain(
      nag_optax.scale_by_backtracking(),
      nag_optax.nesterov(schedule="convex", restart="gradient"),
    ),
    _quadratic(),
    lambda d: jnp.zeros(6, d),
    True,
    "value_fn",
  ),
  "curvature_chain_secant": (
    lambda: optax.chain(
      nag_optax.scale_by_curvature(), nag_optax.nesterov(schedule="convex", restart="speed")
    ),
    _quadratic(),
    lambda d: jnp.zeros(6, d),
    False,
    "none",
  ),
  "auto_nag_sgd": (nag_optax.auto_nag_sgd, _noisy_tree_loss, _tree_start, False, "value"),
  "auto_nag_sgd_without_value": (
    nag_optax.auto_nag_sgd,
    _noisy_tree_loss,
    _tree_start,
    False,
    "none",
  ),
  "auto_nadamw": (
    lambda: nag_optax.auto_nadamw(weight_decay=1e-3),
    _noisy_tree_loss,
    _tree_start,
    False,
    "value",
  ),
  "auto_nadamw_without_average": (
    lambda: nag_optax.auto_nadamw(average_power=None),
    _noisy_tree_loss,
    _tree_start,
    False,
    "none",
  ),
  # The full-precision settings (float32 first moment and average, full estimate): the optimizer
  # as it was before its state was made lean (see test_full_precision_is_the_optimizer_before).
  "auto_nadamw_full_precision": (
    lambda: nag_optax.auto_nadamw(
      weight_decay=1e-3, mu_dtype=None, average_dtype=None, subsample=1
    ),
    _noisy_tree_loss,
    _tree_start,
    False,
    "value",
  ),
  "auto_nadamw_full_precision_without_average": (
    lambda: nag_optax.auto_nadamw(average_power=None, mu_dtype=None, subsample=1),
    _noisy_tree_loss,
    _tree_start,
    False,
    "none",
  ),
  "auto_nadamw_factored": (
    lambda: nag_optax.auto_nadamw(factored=True),
    _noisy_tree_loss,
    _tree_start,
    False,
    "value",
  ),
  "scale_by_distance": (
    lambda: optax.chain(nag_optax.scale_by_distance(), nag_optax.nesterov(0.5)),
    _noisy_tree_loss,
    _tree_start,
    False,
    "value",
  ),
  "average_iterates_sgd": (
    lambda: nag_optax.average_iterates(optax.sgd(0.05), power=2.0),
    _noisy_tree_loss,
    _tree_start,
    False,
    "none",
  ),
  "contrib_scale_by_hypergradient_per_leaf": (
    lambda: optax.chain(
      contrib.scale_by_hypergradient(1e-3, per_leaf=True), nag_optax.nesterov(0.9)
    ),
    _noisy_tree_loss,
    _tree_start,
    False,
    "none",
  ),
}


def _has_average(state, params) -> bool:
  try:
    nag_optax.averaged_params(state, params)
  except ValueError:
    return False
  return True


def trajectory(name: str) -> np.ndarray:
  """The params after each of ``STEPS`` updates (and the iterate average, where the optimizer
  keeps one), flattened: shape ``(STEPS, n)``."""
  make, loss, start, float64, extras = CASES[name]
  dtype = jnp.float64 if float64 else jnp.float32
  with enable_x64(float64):
    tx = make()
    params = start(dtype)
    minibatch = loss.__code__.co_argcount == 2
    averaged = _has_average(tx.init(params), params)

    def step(carry, k):
      x, state = carry
      fun = (lambda p: loss(p, k)) if minibatch else loss
      value, grad = jax.value_and_grad(fun)(x)
      extra = {}
      if extras in ("value", "value_fn"):
        extra["value"] = value
      if extras == "value_fn":
        extra["value_fn"] = fun
      updates, state = tx.update(grad, state, x, **extra)
      x = optax.apply_updates(x, updates)
      leaves = jax.tree.leaves(x)
      if averaged:
        leaves += jax.tree.leaves(nag_optax.averaged_params(state, x))
      return (x, state), jnp.concatenate([jnp.ravel(v).astype(dtype) for v in leaves])

    run = jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), jnp.arange(STEPS))[1])
    return np.asarray(run(params))


def _fingerprint() -> str:
  return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, {_cpu()}"


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _digest(values: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def record(names=None) -> None:
  """Record ``names`` (default: every case), keeping the other recorded cases as they are."""
  out = {}
  if names is not None:
    with np.load(RECORD_PATH) as data:
      out = {k: data[k] for k in data.files}
      assert str(out["fingerprint"]) == _fingerprint(), "record every case under new versions"
  out["fingerprint"] = np.asarray(_fingerprint())
  for name in CASES if names is None else names:
    values = trajectory(name)
    assert np.all(np.isfinite(values)), name
    out[f"{name}/digest"] = np.asarray(_digest(values))
    out[f"{name}/checkpoints"] = values[[k - 1 for k in CHECKPOINTS]]
  np.savez_compressed(RECORD_PATH, **out)


@pytest.fixture(scope="module")
def recorded():
  with np.load(RECORD_PATH) as data:
    return {k: data[k] for k in data.files}


def test_every_public_optimizer_has_a_recorded_case():
  covered = {name.split("_float")[0] for name in CASES}
  for optimizer in ("nag", "auto_nag", "auto_nag_sgd", "auto_nadamw"):
    assert optimizer in covered or any(c.startswith(optimizer) for c in CASES), optimizer


@pytest.mark.parametrize("name", list(CASES))
def test_iterates_equal_the_recorded_ones(name, recorded):
  values = trajectory(name)
  checkpoints = values[[k - 1 for k in CHECKPOINTS]]
  if str(recorded["fingerprint"]) == _fingerprint():
    if _digest(values) != str(recorded[f"{name}/digest"]):
      differs = ~np.all(checkpoints == recorded[f"{name}/checkpoints"], axis=1)
      first = CHECKPOINTS[int(np.argmax(differs))] if differs.any() else "between checkpoints"
      pytest.fail(f"{name}: the iterates differ from the recorded ones (first at step {first}).")
  else:
    # Another XLA may round differently: the early iterates still agree closely.
    early = [i for i, k in enumerate(CHECKPOINTS) if k <= 50]
    np.testing.assert_allclose(
      checkpoints[early], recorded[f"{name}/checkpoints"][early], rtol=1e-4, atol=1e-6
    )


if __name__ == "__main__":
  import sys

  chosen = sys.argv[1:] or None
  record(chosen)
  print(f"recorded {chosen or 'every case'} to {RECORD_PATH} ({_fingerprint()})")


# Recorded under these names before the minibatch optimizers' state was made lean (float32
# first moment and average, the estimate on every coordinate).
BEFORE_LEAN = {
  "auto_nadamw_full_precision": "auto_nadamw",
  "auto_nadamw_full_precision_without_average": "auto_nadamw_without_average",
}


@pytest.mark.parametrize("name", list(BEFORE_LEAN))
def test_full_precision_is_the_optimizer_before_the_lean_state(name, recorded):
  before = recorded[f"before_lean/{BEFORE_LEAN[name]}/checkpoints"]
  if str(recorded["fingerprint"]) != _fingerprint():
    pytest.skip("recorded under other versions")
  checkpoints = trajectory(name)[[k - 1 for k in CHECKPOINTS]]
  # Equal to rounding: the guard's decision taken before the update, and the statistics packed
  # into vectors, let XLA fuse the arithmetic differently (last-bit differences from the first
  # steps, 1e-7 relative after 300).
  np.testing.assert_allclose(checkpoints, before, rtol=1e-5, atol=1e-9)
