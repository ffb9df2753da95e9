"""The workloads' Flax NNX models (float32).

Convolutions are written as one matmul over patches (im2col) and attention as plain matmuls:
the same maths and initialisation as ``nnx.Conv`` and ``nnx.MultiHeadAttention``, which XLA:CPU
differentiates far more slowly on these tiny inputs.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.workloads.data import CONTEXT


class MLP(nnx.Module):
  """64-128-10 with ReLU."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(jax.nn.relu(self.hidden(x)))


class Conv3x3(nnx.Module):
  """A 3x3 'SAME' convolution written as one matmul over 3x3 patches (im2col).

  Same maths and initialisation as ``nnx.Conv(kernel_size=(3, 3))``; XLA:CPU runs the
  gradient of ``lax.conv`` on these tiny images far slower than this matmul.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
      [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
    )
    return patches @ self.kernel[...].reshape(9 * c, -1) + self.bias[...]


class CNN(nnx.Module):
  """Two 3x3 convolutions (16 and 32 channels, ReLU), 2x2 average pooling, a dense layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = Conv3x3(1, 16, rngs=rngs)
    self.conv2 = Conv3x3(16, 32, rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    return self.out(x.reshape(x.shape[0], -1))


class Conv1D(nnx.Module):
  """A 1-D 'SAME' convolution of odd width as one matmul over patches (im2col)."""

  def __init__(self, cin: int, cout: int, width: int = 5, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.width = width
    self.kernel = nnx.Param(init(rngs.params(), (width, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x):
    n, length, c = x.shape
    half = self.width // 2
    xp = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
    patches = jnp.concatenate([xp[:, i : i + length, :] for i in range(self.width)], axis=-1)
    return patches @ self.kernel[...].reshape(self.width * c, -1) + self.bias[...]


def _pool1d(x):
  """2x average pooling along the length of (n, length, channels)."""
  n, length, c = x.shape
  return x.reshape(n, length // 2, 2, c).mean(axis=2)


class CNN1D(nnx.Module):
  """MNIST-1D: three width-5 convolutions (32 channels, ReLU, each followed by 2x average
  pooling: length 40 -> 20 -> 10 -> 5) and a dense layer."""

  def __init__(self, rngs: nnx.Rngs, channels: int = 32):
    self.conv1 = Conv1D(1, channels, rngs=rngs)
    self.conv2 = Conv1D(channels, channels, rngs=rngs)
    self.conv3 = Conv1D(channels, channels, rngs=rngs)
    self.out = nnx.Linear(5 * channels, 10, rngs=rngs)

  def __call__(self, x):
    for conv in (self.conv1, self.conv2, self.conv3):
      x = _pool1d(jax.nn.relu(conv(x)))
    return self.out(x.reshape(x.shape[0], -1))


class ResBlock1D(nnx.Module):
  """Pre-norm residual block: x + conv(relu(conv(relu(LayerNorm(x)))))."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(channels, rngs=rngs)
    self.conv1 = Conv1D(channels, channels, 3, rngs=rngs)
    self.conv2 = Conv1D(channels, channels, 3, rngs=rngs)

  def __call__(self, x):
    return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(self.norm(x)))))


class ResNet1D(nnx.Module):
  """MNIST-1D: a width-5 stem convolution and 2x pooling (length 20), four residual blocks of
  two width-3 convolutions with LayerNorm (10 convolutions in all), LayerNorm, mean pooling,
  a dense layer."""

  def __init__(self, rngs: nnx.Rngs, channels: int = 24, blocks: int = 4):
    self.stem = Conv1D(1, channels, 5, rngs=rngs)
    self.blocks = (
      nnx.List([ResBlock1D(channels, rngs=rngs) for _ in range(blocks)])
      if hasattr(nnx, "List")
      else [ResBlock1D(channels, rngs=rngs) for _ in range(blocks)]
    )
    self.norm = nnx.LayerNorm(channels, rngs=rngs)
    self.out = nnx.Linear(channels, 10, rngs=rngs)

  def __call__(self, x):
    x = _pool1d(self.stem(x))
    for block in self.blocks:
      x = block(x)
    return self.out(jax.nn.relu(self.norm(x)).mean(axis=1))


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention written out (one qkv matmul, softmax, one output matmul):
  the same maths as ``nnx.MultiHeadAttention`` with a causal mask, less to trace and compile."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
    self.out = nnx.Linear(width, width, rngs=rngs)

  def __call__(self, x):
    n, length, width = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(n, length, 3, self.heads, -1), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (n, length, heads, head_dim)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    return self.out(jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, width))


class TransformerBlock(nnx.Module):
  """Pre-norm causal self-attention and a 4x MLP (GELU)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attention = CausalSelfAttention(width, heads, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """Byte-level causal transformer LM: embedding + learned positions, pre-norm blocks, head."""

  def __init__(
    self,
    rngs: nnx.Rngs,
    width: int = 64,
    heads: int = 4,
    layers: int = 2,
    context: int = CONTEXT,
    vocab: int = 256,
  ):
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
    blocks = [TransformerBlock(width, heads, rngs=rngs) for _ in range(layers)]
    self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, vocab, rngs=rngs)

  def __call__(self, tokens):
    length = tokens.shape[1]
    x = self.embed(tokens) + self.position[...][:length]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))
