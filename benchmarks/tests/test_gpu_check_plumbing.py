"""Plumbing of the GPU check study on the CPU: the comparison, the exit status without a GPU, and
one check (minimize) run with the CPU in the GPU's place. Runs in seconds."""

import math

import jax
import numpy as np
import pytest

from benchmarks.studies import gpu_check


def test_relative_difference_is_normwise_over_the_tree():
  reference = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # norm 5
  assert gpu_check.relative_difference(reference, reference) == 0.0
  off = {"a": np.array([3.0, 3e-4]), "b": np.array([4.0 + 4e-4])}  # difference norm 5e-4
  assert gpu_check.relative_difference(off, reference) == pytest.approx(1e-4)
  assert (
    gpu_check.relative_difference({"a": np.array([np.nan, 0.0]), "b": np.array([4.0])}, reference)
    == math.inf
  )
  assert gpu_check.relative_difference(np.zeros(2), np.zeros(2)) == 0.0


def test_a_check_fails_beyond_the_tolerance_and_not_within():
  reference = np.array([1.0, 2.0], np.float32)
  checks = gpu_check.Checks()
  checks.close("within", reference * (1 + gpu_check.RTOL / 2), reference)
  assert not checks.failed
  checks.close("beyond", reference * (1 + 2 * gpu_check.RTOL), reference)
  assert checks.failed


def test_without_a_gpu_it_says_so_and_exits_with_its_own_status(capsys):
  if gpu_check.find_device("gpu") is not None:
    pytest.skip("a GPU is present: main() would run the whole check")
  assert gpu_check.main([]) == gpu_check.NO_GPU == 3
  assert "No GPU found" in capsys.readouterr().out


def test_the_minimize_check_passes_with_the_cpu_against_itself(capsys):
  checks = gpu_check.Checks()
  gpu_check.check_minimize(checks, jax.devices("cpu")[0])
  out = capsys.readouterr().out
  assert not checks.failed, out
  assert out.count("ok  ") == 3, out
