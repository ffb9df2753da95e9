"""The fixed coordinate subsample of the rate statistics: which slices, and the scaled sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_optax._src import numerics
from nag_optax._src import sampling


@pytest.mark.parametrize("subsample,stride", [(1, 1), (2, 2), (16, 17), (17, 17), (32, 37)])
def test_the_stride_is_the_smallest_prime_not_below_the_subsample(subsample, stride):
  assert sampling.stride(subsample) == stride


@pytest.mark.parametrize(
  "shape,axis",
  [
    ((512, 1024), 0),  # whole rows: contiguous memory
    ((3, 3, 128, 512), 2),  # a conv kernel: the first axis long enough
    ((8, 16, 1024), 2),
    ((70_000,), 0),
  ],
)
def test_a_large_leaf_is_sampled_every_pth_slice_of_its_first_long_axis(shape, axis):
  assert sampling.axis(shape, 17) == axis
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  expected = np.take(np.asarray(x), np.arange(0, shape[axis], 17), axis=axis)
  np.testing.assert_array_equal(sampling.sample(x, 16), expected)
  (weight,) = sampling.weights(x, 16)
  assert weight == pytest.approx(x.size / expected.size)


def test_small_leaves_and_subsample_one_are_whole():
  tree = {"w": jnp.ones((255, 256)), "b": jnp.ones(256), "s": jnp.ones(())}  # below 2**16
  assert sampling.sample(tree, 16)["w"] is tree["w"]
  assert sampling.weights(tree, 16) == [1.0, 1.0, 1.0]
  large = {"w": jnp.ones((256, 256))}
  assert sampling.sample(large, 1) is large and sampling.weights(large, 1) == [1.0]


def test_weighted_sums_estimate_the_full_sums():
  rng = np.random.default_rng(0)
  tree = {"w": jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32), "b": jnp.ones(64)}
  (full,) = numerics.sums(lambda x: (x * x,), tree)
  (estimate,) = numerics.sums(
    lambda x: (x * x,), sampling.sample(tree, 16), leaf_weights=sampling.weights(tree, 16)
  )
  np.testing.assert_allclose(estimate, full, rtol=0.03)  # 241 of 4,096 rows


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize("spec", [("data", "model"), (None, "model"), ("model", None)])
def test_a_sharded_leaf_is_sampled_without_gathering(spec):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  x = jax.device_put(jnp.arange(1088 * 64.0).reshape(1088, 64), sharding)  # 1088 = 4 * 16 * 17
  step = lambda x: jnp.sum(sampling.sample(x, 16) ** 2)
  hlo = jax.jit(step).lower(x).compile().as_text()
  assert "all-gather" not in hlo
