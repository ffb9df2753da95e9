"""Multi-host: processes joined by ``jax.distributed`` compute what one process of all devices does.

``tests/multihost_worker.py`` trains an MLP sharded over a global 8-device mesh with
``auto_nag_sgd`` (passing ``value=loss``) and runs ``minimize`` with ``auto_nag`` on a sharded
least-squares problem. It runs here, all at once, as

* two hosts: two processes of 4 virtual CPU devices each, joined by ``jax.distributed`` over the
  loopback interface with gloo CPU collectives (the README's multi-host recipe,
  docs/multihost.md);
* one host, gloo: one process of 8 devices with the same collectives (``jax.distributed`` with a
  single process);
* one host: one plain process of 8 devices.

Params, optimizer states, losses and the ``minimize`` solution of the two hosts must equal the
one-host gloo run bit for bit (the split over processes changes no arithmetic) and match the plain
run to float32 rounding (its in-process all-reduce sums the shards in another order than gloo).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import multihost_worker

WORKER = pathlib.Path(multihost_worker.__file__)
TIMEOUT_S = 240  # for all the processes together; they take ~20 s on two idle cores
# The plain run sums shards in another order: rounding differences of 1e-7 relative grow over the
# steps to at most 5e-5 of a leaf's largest entry (auto_nag's two-point curvature estimate and the
# gradient it keeps, near convergence); a wrong shard or a missed reduction is off by O(1).
PLAIN_RUN_TOL = 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tail(path: pathlib.Path, lines: int = 30) -> str:
  text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no output)"]
  return "\n".join(text[-lines:])


def _run_all(commands: dict, tmp: pathlib.Path) -> None:
  """Runs the worker commands at once; fails (or skips without gloo) unless all exit 0 in time."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # each worker sets its own
  procs, logs = {}, {}
  try:
    for name, args in commands.items():
      logs[name] = tmp / f"{name}.log"
      with open(logs[name], "wb") as log:
        procs[name] = subprocess.Popen(
          [sys.executable, str(WORKER), *args],
          stdout=log,
          stderr=subprocess.STDOUT,
          env=env,
          cwd=WORKER.parent.parent,
        )
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs.values()):
      # One failed process leaves its peers waiting on collectives: stop at the first failure.
      if any(p.poll() not in (None, 0) for p in procs.values()) or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
      p.wait()
  codes = {name: p.returncode for name, p in procs.items()}
  if multihost_worker.NO_GLOO in codes.values():
    name = next(n for n, c in codes.items() if c == multihost_worker.NO_GLOO)
    pytest.skip(_tail(logs[name], 1))
  if any(codes.values()):
    pytest.fail(
      f"worker exit codes {codes} (negative: killed after {TIMEOUT_S} s or at the first "
      f"failure)\n" + "\n".join(f"--- {n} ---\n{_tail(log)}" for n, log in logs.items())
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  port, gloo_port = _free_port(), _free_port()

  def worker(name, devices, *flags):
    return [str(tmp / f"{name}.npz"), "--devices", str(devices), *map(str, flags)]

  commands = {
    "host0": worker("two_hosts", 4, "--num-processes", 2, "--process-id", 0, "--port", port),
    "host1": worker("two_hosts", 4, "--num-processes", 2, "--process-id", 1, "--port", port),
    "one_host_gloo": worker("one_host_gloo", 8, "--port", gloo_port),
    "one_host": worker("one_host", 8),
  }
  _run_all(commands, tmp)
  names = ("two_hosts", "one_host_gloo", "one_host")
  return {name: dict(np.load(tmp / f"{name}.npz")) for name in names}


def test_two_hosts_equal_one_host_with_the_same_collectives_bit_for_bit(results):
  two_hosts, one_host = results["two_hosts"], results["one_host_gloo"]
  assert sorted(two_hosts) == sorted(one_host)
  for key, want in one_host.items():
    np.testing.assert_array_equal(two_hosts[key], want, err_msg=key)


def test_two_hosts_match_the_plain_single_process_run(results):
  two_hosts, one_host = results["two_hosts"], results["one_host"]
  assert sorted(two_hosts) == sorted(one_host)
  assert any(k.startswith("mlp.opt_state.") for k in one_host)
  assert any(k.startswith("minimize.state.") for k in one_host)
  for key, want in one_host.items():
    got = two_hosts[key]
    assert got.shape == want.shape and got.dtype == want.dtype, key
    if np.issubdtype(want.dtype, np.floating):  # the same steps, rounded otherwise
      scale = np.max(np.abs(want), initial=0.0, where=np.isfinite(want))
      np.testing.assert_allclose(got, want, rtol=0, atol=PLAIN_RUN_TOL * scale, err_msg=key)
    else:  # counts, restarts, stop reasons, flags: exactly
      np.testing.assert_array_equal(got, want, err_msg=key)


def test_the_compared_runs_trained_and_converged(results):
  # Guards the comparisons above against comparing runs that did nothing.
  run = results["two_hosts"]
  losses = run["mlp.losses"]
  assert losses[-10:].mean() < 0.8 * losses[:10].mean(), losses
  assert run["mlp.opt_state.inner_state[0].learning_rate"] > 1e-4  # grown from 1e-6
  assert not run["mlp.should_stop"]
  assert run["minimize.grad_norm"] < 0.05 * run["minimize.initial_grad_norm"]
  assert run["minimize.steps"] == multihost_worker.MINIMIZE_STEPS
  assert str(run["minimize.stop_reason"]) == "MAX_STEPS"
