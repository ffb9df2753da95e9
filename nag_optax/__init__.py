"""nag_optax: Nesterov-accelerated gradient descent that tunes itself, as Optax transformations."""

from nag_optax._src.alias import auto_nadamw
from nag_optax._src.alias import auto_nag
from nag_optax._src.alias import auto_nag_sgd
from nag_optax._src.alias import nag
from nag_optax._src.averaging import AverageIteratesState
from nag_optax._src.averaging import average_iterates
from nag_optax._src.averaging import averaged_params
from nag_optax._src.hypergradient import AnnealAfterProgressState
from nag_optax._src.hypergradient import ScaleByDistanceState
from nag_optax._src.hypergradient import ScaleByHypergradientState
from nag_optax._src.hypergradient import anneal_after_progress
from nag_optax._src.hypergradient import scale_by_distance
from nag_optax._src.hypergradient import scale_by_hypergradient
from nag_optax._src.momentum import NesterovState
from nag_optax._src.momentum import condition_number_from_restart_interval
from nag_optax._src.momentum import momentum_from_condition_number
from nag_optax._src.momentum import nesterov
from nag_optax._src.solve import Solution
from nag_optax._src.solve import minimize
from nag_optax._src.solve import progress_bar
from nag_optax._src.spectral import ScaleBySpectralState
from nag_optax._src.spectral import SpectralThenNesterovState
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

__version__ = "0.1.0"

__all__ = (
  "AnnealAfterProgressState",
  "anneal_after_progress",
  "AverageIteratesState",
  "average_iterates",
  "averaged_params",
  "NesterovState",
  "ScaleByBacktrackingState",
  "ScaleByCurvatureState",
  "ScaleByDistanceState",
  "ScaleByHypergradientState",
  "ScaleBySpectralState",
  "SpectralThenNesterovState",
  "Solution",
  "auto_nag",
  "auto_nadamw",
  "auto_nag_sgd",
  "StopReason",
  "StopWhenState",
  "minimize",
  "condition_number_from_restart_interval",
  "momentum_from_condition_number",
  "nag",
  "nesterov",
  "progress_bar",
  "scale_by_backtracking",
  "scale_by_curvature",
  "scale_by_distance",
  "scale_by_hypergradient",
  "scale_by_spectral",
  "should_stop",
  "stop_reason",
  "stop_when",
)
