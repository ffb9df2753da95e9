"""nag_optax: Nesterov-accelerated gradient descent that tunes itself, as Optax transformations."""

from nag_optax._src.alias import nag
from nag_optax._src.momentum import NesterovState
from nag_optax._src.momentum import momentum_from_condition_number
from nag_optax._src.momentum import nesterov

__version__ = "0.1.0"

__all__ = (
    "NesterovState",
    "momentum_from_condition_number",
    "nag",
    "nesterov",
)
