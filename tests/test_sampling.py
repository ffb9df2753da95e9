"""The fixed coordinate subsample of the rate statistics: which slices, and the scaled sums."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
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
  sampled, no_small = jax.tree.leaves(sampling.sample(x, 16))
  np.testing.assert_array_equal(sampled, expected)
  assert no_small.shape == (0,)
  weight, vector_weight = sampling.weights(x, 16)
  assert weight == pytest.approx(x.size / expected.size) and vector_weight == 1.0


def test_small_leaves_are_whole_in_one_vector_and_subsample_one_is_the_tree():
  tree = {"a": jnp.ones((255, 256)), "b": jnp.arange(3.0, dtype=jnp.bfloat16), "c": jnp.ones(())}
  large = jnp.ones((512, 128))  # 2**16 elements: sampled
  parts = jax.tree.leaves(sampling.sample({"large": large, **tree}, 16))
  assert [p.shape for p in parts] == [(31, 128), (255 * 256 + 3 + 1,)]
  assert parts[1].dtype == jnp.float32  # small leaves flattened, in at least float32
  np.testing.assert_array_equal(parts[1][-4:], [0.0, 1.0, 2.0, 1.0])  # b, then c
  assert sampling.weights({"large": large, **tree}, 16) == [pytest.approx(512 / 31), 1.0]
  assert sampling.sample(tree, 1) is tree and sampling.weights(tree, 1) == [1.0, 1.0, 1.0]


def test_weighted_sums_estimate_the_full_sums():
  rng = np.random.default_rng(0)
  tree = {"w": jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32), "b": jnp.ones(64)}
  (full,) = numerics.sums(lambda x: (x * x,), tree)
  (estimate,) = numerics.sums(
    lambda x: (x * x,), sampling.sample(tree, 16), leaf_weights=sampling.weights(tree, 16)
  )
  np.testing.assert_allclose(estimate, full, rtol=0.03)  # 241 of 4,096 rows


def test_the_sample_keeps_the_tree_structure_that_optax_map_params_places():
  params = {"large": jnp.ones((512, 128)), "small": jnp.ones(3)}
  tx = nag_optax.scale_by_distance()
  state = tx.init(params)
  # Every params-shaped slot of the state, here the sample's slices, gets the params' "spec".
  specs = {"large": "rows", "small": "replicated"}
  mapped = optax.tree.map_params(
    tx,
    lambda _, spec: spec,
    state,
    specs,
    transform_non_params=lambda _: None,
    is_leaf=lambda v: isinstance(v, optax.MaskedNode),
  )
  # (The small leaf's empty slot gets its spec too, as with optax.masked.)
  assert mapped.initial_params.large == specs
  assert mapped.grad_sum.large["large"] == "rows" and mapped.grad_sum.small is None
  # A model with no small leaf keeps the same structure: an empty vector.
  empty = tx.init({"large": jnp.ones((512, 128))}).initial_params.small
  assert empty.shape == (0,)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize("spec", [("data", "model"), (None, "model"), ("model", None)])
def test_a_sharded_leaf_is_sampled_without_gathering(spec):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  x = jax.device_put(jnp.arange(1088 * 64.0).reshape(1088, 64), sharding)  # 1088 = 4 * 16 * 17
  step = lambda x: jnp.sum(sampling.sample(x, 16).large ** 2)
  hlo = jax.jit(step).lower(x).compile().as_text()
  assert "all-gather" not in hlo
