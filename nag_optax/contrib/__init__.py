"""Experiments kept for study, not recommended (as ``optax.contrib``).

``scale_by_hypergradient``: the hypergradient learning rate, which freezes over long minibatch
runs (its rate shrinks to its floor once the gradient noise dominates); use
:func:`nag_optax.scale_by_distance` or the optimizers built on it instead.
"""

from nag_optax.contrib._hypergradient import ScaleByHypergradientState
from nag_optax.contrib._hypergradient import scale_by_hypergradient

__all__ = (
  "ScaleByHypergradientState",
  "scale_by_hypergradient",
)
