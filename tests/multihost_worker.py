"""One process of the multi-host check in ``test_multihost.py`` (a script the test launches).

Usage::

  python tests/multihost_worker.py OUT.npz --devices 4 --num-processes 2 \\
      --process-id I --port PORT               # host I (0 and 1) of two, coordinator on PORT
  python tests/multihost_worker.py OUT.npz --devices 8 --port PORT   # one host, gloo
  python tests/multihost_worker.py OUT.npz --devices 8               # one plain process

Each process sees ``--devices`` virtual CPU devices. With ``--port`` it joins the others through
``jax.distributed`` (coordinator ``127.0.0.1:PORT``, gloo CPU collectives over the loopback
interface); without, it is a plain single process. All of them build the same global 8-device
mesh, train the same sharded MLP with ``auto_nag_sgd`` and run ``minimize`` with ``auto_nag`` on
a sharded least-squares problem; process 0 gathers the global params and optimizer states to the
host and writes them, keyed by tree path, to ``OUT.npz``. Exit status 77: this JAX has no gloo
CPU collectives (the test skips).
"""

import argparse
import os
import sys
import traceback

STEPS = 60  # training steps of the MLP (the rate grows from 1e-6 to ~2e-3; the loss falls 30%)
MINIMIZE_STEPS = 40  # the most steps of minimize (||grad|| falls ~100x)
NO_GLOO = 77


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("out")
  parser.add_argument("--devices", type=int, required=True)
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--port", type=int, default=None)
  return parser.parse_args()


if __name__ == "__main__":  # (pytest's --doctest-modules imports this file: no side effects then)
  ARGS = _parse_args()
  # Before jax is imported: the number of virtual CPU devices of this process.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

# After XLA_FLAGS is set.
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nag_optax  # noqa: E402


def _global_array(value: np.ndarray, mesh, spec) -> jax.Array:
  """A global array from a host value every process holds: each fills its own shards."""
  sharding = NamedSharding(mesh, spec)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def train_mlp(mesh):
  """``STEPS`` jitted steps of ``auto_nag_sgd`` on an MLP: batch on "data", hidden on "model"."""
  rng = np.random.default_rng(0)
  n, d_in, hidden, d_out = 64, 16, 32, 4
  x = rng.normal(size=(STEPS, n, d_in)).astype(np.float32)
  teacher = rng.normal(size=(d_in, d_out)).astype(np.float32)
  y = np.sin(x @ teacher).astype(np.float32)
  params = {
    "w1": _global_array(
      (rng.normal(size=(d_in, hidden)) / 4).astype(np.float32), mesh, P(None, "model")
    ),
    "b1": _global_array(np.zeros(hidden, np.float32), mesh, P("model")),
    "w2": _global_array(
      (rng.normal(size=(hidden, d_out)) / 6).astype(np.float32), mesh, P("model", None)
    ),
    "b2": _global_array(np.zeros(d_out, np.float32), mesh, P()),
  }
  batches = _global_array(x, mesh, P(None, "data")), _global_array(y, mesh, P(None, "data"))

  tx = nag_optax.auto_nag_sgd()
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batches, i):
    x, y = batches[0][i], batches[1][i]  # batch i, still sharded over "data"
    loss, grads = jax.value_and_grad(_mlp_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(STEPS):
    params, opt_state, loss = step(params, opt_state, batches, jnp.int32(i))
    losses.append(loss)
  _check_sharded_like(params, opt_state)
  # Let the last step finish before the next programs start: with jaxlib 0.6 the gloo collectives
  # of two programs in flight at once can mix up their messages (an abort in gloo's pair.cc). And
  # stack under jit: jax 0.6 hung on the eager stack of global scalars in two processes.
  return jax.block_until_ready((params, opt_state, jax.jit(jnp.stack)(losses)))


def _least_squares(w, a, b):
  return 0.5 * jnp.mean((a @ w - b) ** 2)


def run_minimize(mesh):
  """``minimize`` with ``auto_nag`` on least squares: rows of A over "data", w over "model"."""
  rng = np.random.default_rng(1)
  n, d = 128, 32
  a = (rng.normal(size=(n, d)) * np.logspace(0, 1, d)).astype(np.float32)
  b = rng.normal(size=(n,)).astype(np.float32)
  w0 = _global_array(np.zeros(d, np.float32), mesh, P("model"))
  args = (_global_array(a, mesh, P("data", "model")), _global_array(b, mesh, P("data")))
  sol = nag_optax.minimize(
    _least_squares, w0, nag_optax.auto_nag(), args=args, max_steps=MINIMIZE_STEPS
  )
  _check_sharded_like(w0, (sol.params, sol.state))
  return sol


def _check_sharded_like(params, tree):
  """Each leaf of ``tree`` shaped like a param is sharded like it (not gathered, not replicated)."""
  shardings = {leaf.shape: leaf.sharding for leaf in jax.tree.leaves(params)}
  assert len(shardings) == len(jax.tree.leaves(params)), "param shapes must tell the params apart"
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if leaf.shape in shardings:
      assert leaf.sharding.is_equivalent_to(shardings[leaf.shape], leaf.ndim), (
        jax.tree_util.keystr(path),
        leaf.sharding,
        shardings[leaf.shape],
      )


def _flatten(prefix, tree):
  return {
    prefix + jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _initialize(args):
  """Joins the other processes; exits with ``NO_GLOO`` where JAX has no gloo CPU collectives."""
  try:
    # Gloo is the default in recent JAX; older versions have no CPU collectives by default.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError) as e:  # an unknown option or value
    print(f"no gloo CPU collectives in jax {jax.__version__}: {e}")
    _exit_now(NO_GLOO)
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{args.port}",
    num_processes=args.num_processes,
    process_id=args.process_id,
  )
  try:
    jax.devices()  # creates the CPU client with its collectives
  except AttributeError as e:  # a jaxlib built without make_gloo_tcp_collectives
    if "gloo" not in str(e):
      raise
    print(f"no gloo CPU collectives in this jaxlib: {e}")
    _exit_now(NO_GLOO)


def main(args):
  if args.port is not None:
    _initialize(args)
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.device_count() == 8, jax.devices()
  assert jax.local_device_count() == args.devices, jax.local_devices()
  # The global mesh over every process's devices (Mesh's axes are Auto: XLA propagates shardings).
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))

  params, opt_state, losses = train_mlp(mesh)
  sol = run_minimize(mesh)
  leaves = {
    **_flatten("mlp.params", params),
    **_flatten("mlp.opt_state", opt_state),
    "mlp.losses": losses,
    **_flatten("minimize", sol),
    # A packed statistic of the state, read by its name (a property, not a leaf).
    "minimize.initial_grad_norm": sol.state.initial_grad_norm,
  }
  # Each process holds only its shards: gather the global values to every host.
  leaves = multihost_utils.process_allgather(leaves, tiled=True)
  # The stopping signal reads replicated scalars on the host, which every process can do.
  leaves["mlp.should_stop"] = np.asarray(nag_optax.should_stop(opt_state))
  leaves["minimize.stop_reason"] = np.asarray(sol.stop_reason.name)
  if jax.process_index() == 0:
    np.savez(args.out, **{k: np.asarray(v) for k, v in leaves.items()})
  if args.port is not None:
    jax.distributed.shutdown()


def _exit_now(code: int) -> None:
  """Exits without jax.distributed's shutdown barrier, which would wait for the peers to finish."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  try:
    main(ARGS)
  except Exception:
    traceback.print_exc()
    _exit_now(1)  # at once, so that the test stops the peers at the first failure
