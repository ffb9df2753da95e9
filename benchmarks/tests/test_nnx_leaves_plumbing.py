"""Plumbing of the nnx_leaves study: every row steps, and the rows carry the leaves they claim."""

from benchmarks.studies import nnx_leaves


def test_each_row_steps_and_counts_its_leaves():
  leaves = {}
  for name, make in nnx_leaves.OPTIMIZERS.items():
    best, median, leaves[name] = nnx_leaves.nnx_step(make, rounds=2, cached=False)
    assert 0 < best <= median
    jit_best, jit_median = nnx_leaves.jit_step(make, rounds=2)
    assert 0 < jit_best <= jit_median
  adamw, padded, auto, packed = leaves.values()
  # nnx.Optimizer's step counter, adamw's count and two moments per leaf; the padding's links
  # add a leaf each; packed, one buffer per dtype.
  assert (adamw, padded, packed) == (6, 6 + nnx_leaves.PADDING, 5) and auto > packed
