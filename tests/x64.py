"""``enable_x64`` for the tests, on every jax the package supports.

``jax.enable_x64`` (a context manager) is new in jax 0.8; older releases, down to the declared
floor, spell it ``jax.experimental.enable_x64``, which jax 0.10 removed.
"""

import jax
import jax.experimental

try:
  enable_x64 = jax.enable_x64
except AttributeError:  # jax < 0.8
  enable_x64 = jax.experimental.enable_x64
