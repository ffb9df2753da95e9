"""nag_optax: Nesterov-accelerated gradient descent that tunes itself, as Optax transformations."""

from nag_optax._src.alias import auto_nadamw
from nag_optax._src.alias import auto_nag
from nag_optax._src.alias import auto_nag_sgd
from nag_optax._src.alias import nag
from nag_optax._src.annealing import AnnealAfterProgressState
from nag_optax._src.annealing import anneal_after_progress
from nag_optax._src.averaging import AverageIteratesState
from nag_optax._src.averaging import average_iterates
from nag_optax._src.averaging import averaged_params
from nag_optax._src.distance import ScaleByDistanceState
from nag_optax._src.distance import scale_by_distance
from nag_optax._src.hybrid import SpectralThenNesterovState
from nag_optax._src.hybrid import spectral_then_nesterov
from nag_optax._src.momentum import NesterovState
from nag_optax._src.momentum import condition_number_from_restart_interval
from nag_optax._src.momentum import momentum_from_condition_number
from nag_optax._src.momentum import nesterov
from nag_optax._src.packing import PackedState
from nag_optax._src.packing import pack_state
from nag_optax._src.solve import ProgressBar
from nag_optax._src.solve import Solution
from nag_optax._src.solve import minimize
from nag_optax._src.solve import progress_bar
from nag_optax._src.spectral import ScaleBySpectralState
from nag_optax._src.spectral import scale_by_spectral
from nag_optax._src.step_size import ScaleByBacktrackingState
from nag_optax._src.step_size import ScaleByCurvatureState
from nag_optax._src.step_size import scale_by_backtracking
from nag_optax._src.step_size import scale_by_curvature
from nag_optax._src.stopping import StopReason
from nag_optax._src.stopping import StopWhenState
from nag_optax._src.stopping import should_stop
from nag_optax._src.stopping import stop_reason
from nag_optax._src.stopping import stop_when

# Experiments, not at the top level; imported after the modules they build on.
from nag_optax import contrib as contrib  # isort: skip

__version__ = "0.2.0"

__all__ = (
  # Optimizers.
  "auto_nadamw",
  "auto_nag",
  "auto_nag_sgd",
  "nag",
  # Transformations and their states.
  "AnnealAfterProgressState",
  "AverageIteratesState",
  "NesterovState",
  "PackedState",
  "ScaleByBacktrackingState",
  "ScaleByCurvatureState",
  "ScaleByDistanceState",
  "ScaleBySpectralState",
  "SpectralThenNesterovState",
  "StopWhenState",
  "anneal_after_progress",
  "average_iterates",
  "nesterov",
  "pack_state",
  "scale_by_backtracking",
  "scale_by_curvature",
  "scale_by_distance",
  "scale_by_spectral",
  "spectral_then_nesterov",
  "stop_when",
  # Reading a state.
  "StopReason",
  "averaged_params",
  "should_stop",
  "stop_reason",
  # Momentum from a condition number.
  "condition_number_from_restart_interval",
  "momentum_from_condition_number",
  # The solver loop.
  "ProgressBar",
  "Solution",
  "minimize",
  "progress_bar",
)
