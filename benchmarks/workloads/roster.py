"""Which workloads the suite trains, which methods it compares, and how much of each it runs.

Tuned baselines (AdamW, NAdamW, Nesterov SGD with linear warm-up and cosine decay, best of a
learning-rate grid) run to the budget B; the self-tuning peers at their published defaults and
nag_optax's tuning-free optimizers, called with no argument, run to 1.5 B.
"""

import inspect
from typing import Any
from typing import Callable
from typing import Optional

import jax.numpy as jnp
import optax

import nag_optax
from benchmarks.methods import Method
from benchmarks.workloads import data
from benchmarks.workloads import models

Factory = Callable[..., optax.GradientTransformation]

# mode -> the seeds of each class of method, the lr grid ("short" or "long"), evaluations per
# budget (every B / evals steps), {workload: B}, the workloads with the robustness and
# stopping-signal checks (None: all).
# - seeds: the target setters (each tuned baseline at its chosen learning rate: whichever sets the
#   target) and nag_optax's optimizers, and the stopping signal's check of them;
# - grid_seeds: the tuned baselines' learning-rate search (the chosen rate is re-run on `seeds`);
# - peer_seeds: the self-tuning peers; check_seeds: the robustness check and the long run.
# An odd number of seeds for the target setters: the median of an even number of per-seed bests
# lies between two seeds, and only half the setter's seeds would reach its own target.
# Full-mode budgets: where the tuned baselines have converged (the LM: budget-limited; a character
# LM keeps improving slowly); full mode is sized for 45 to 50 minutes on 2 idle CPU cores.
SETTINGS: dict[str, dict[str, Any]] = {
  "smoke": dict(
    seeds=3,
    grid_seeds=1,
    peer_seeds=1,
    check_seeds=1,
    grid="short",
    evals=10,
    budgets=dict(digits_mlp=40, digits_cnn=20, mnist1d_cnn=40, mnist1d_resnet=20, stdlib_lm=20),
    robust=("digits_mlp",),
    stop=("digits_mlp",),
  ),
  "quick": dict(
    seeds=3,
    grid_seeds=1,
    peer_seeds=1,
    check_seeds=1,
    grid="short",
    evals=10,
    budgets=dict(digits_mlp=300, digits_cnn=100, mnist1d_cnn=300, mnist1d_resnet=120, stdlib_lm=60),
    robust=("digits_mlp",),
    stop=("digits_mlp",),
  ),
  "full": dict(
    seeds=5,
    grid_seeds=2,
    peer_seeds=3,
    check_seeds=3,
    grid="long",
    evals=40,
    budgets=dict(
      digits_mlp=1000, digits_cnn=600, mnist1d_cnn=1200, mnist1d_resnet=800, stdlib_lm=600
    ),
    robust=("digits_mlp", "mnist1d_cnn"),
    stop=None,
  ),
}


def seeds_of(kind: str, settings: dict) -> int:
  """The seeds a row is reported on: a tuned baseline's chosen rate and a nag_optax optimizer
  ``settings["seeds"]``, a self-tuning peer ``settings["peer_seeds"]``."""
  return settings["peer_seeds"] if kind == "peer" else settings["seeds"]


def most_seeds(settings: dict) -> int:
  """The seeds a workload prepares: every class of method runs on the first ones it needs."""
  keys = ("seeds", "grid_seeds", "peer_seeds", "check_seeds")
  return max(settings[k] for k in keys)


# Full-mode seconds of each workload on one core, estimated from a full run's part times scaled
# to the lanes of these settings and to MNIST-1D's 4,000-sample evaluations: only to balance the
# worker processes, heaviest first.
RELATIVE_COST = dict(
  stdlib_lm=1730, mnist1d_resnet=1560, mnist1d_cnn=1230, digits_cnn=660, digits_mlp=170
)

SELF_TUNING_FACTOR = 1.5
# The long Adam grid reaches 0.1, beyond the best rate of every workload (0.03 on the two CNNs), so
# that no target is set at the edge of the grid.
ADAM_GRID = {"long": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "short": (1e-3, 3e-3, 1e-2)}
SGD_GRID = {"long": (0.01, 0.03, 0.1, 0.3, 1.0), "short": (0.03, 0.1, 0.3)}
WARMUP_FRACTION = 0.05
ROBUST_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# The stopping signal's check: the documented stop, the optimizers' defaults (a 1% minimum
# improvement, a patience of at least a quarter of the step of the best) with a least patience of
# a tenth of B (4 evaluations), chosen by replaying whole runs on seeds the suite never uses
# (`benchmarks/studies/stop_rule.py`); STOP_OPTIONS: further `stop_when` keywords of the
# tuning-free factories, the same on the stopped lane and its reference lane.
STOP_PATIENCE_FRACTION = 0.1
STOP_OPTIONS: dict[str, Any] = {}
# A whole long run at the defaults shows a rate that collapses to its floor or a training loss that
# stops falling, which a run to a first target can miss.
LONG_RUN_WORKLOAD = "digits_mlp"
LONG_RUN_STEPS = {"smoke": 400, "quick": 2_000, "full": 10_000}
TIMED_BLOCKS = 4  # full mode's ms/step: single-seed runs of 4 evaluation blocks

AUTO_SGD = "nag_optax.auto_nag_sgd()"
AUTO_NADAMW = "nag_optax.auto_nadamw()"


# ---------------------------------------------------------------------------------------------
# Workloads.


def digits_mlp() -> data.Workload:
  return data.Workload(
    "digits_mlp", "digits MLP", models.MLP, data.load_digits_splits(), 64, "accuracy", True
  )


def digits_cnn() -> data.Workload:
  return data.Workload(
    "digits_cnn", "digits CNN", models.CNN, data.load_digits_splits(), 64, "accuracy", True
  )


def mnist1d_cnn() -> data.Workload:
  return data.Workload(
    "mnist1d_cnn", "MNIST-1D CNN", models.CNN1D, data.load_mnist1d_splits(), 64, "accuracy", True
  )


def mnist1d_resnet() -> data.Workload:
  return data.Workload(
    "mnist1d_resnet",
    "MNIST-1D ResNet+LN",
    models.ResNet1D,
    data.load_mnist1d_splits(),
    64,
    "accuracy",
    True,
  )


def stdlib_lm() -> data.Workload:
  splits, info = data.load_corpus_splits()
  return data.Workload(
    "stdlib_lm",
    "stdlib char LM",
    models.CharTransformer,
    splits,
    8,
    "bits per character",
    False,
    language_model=True,
    info=info,
  )


WORKLOADS: dict[str, Callable[[], data.Workload]] = {
  "digits_mlp": digits_mlp,
  "digits_cnn": digits_cnn,
  "mnist1d_cnn": mnist1d_cnn,
  "mnist1d_resnet": mnist1d_resnet,
  "stdlib_lm": stdlib_lm,
}


# ---------------------------------------------------------------------------------------------
# Methods: make(learning_rate, budget) -> optimizer.


def nag_factories() -> dict[str, Factory]:
  """name -> factory(**kwargs): every tuning-free nag_optax optimizer."""
  return {AUTO_SGD: nag_optax.auto_nag_sgd, AUTO_NADAMW: nag_optax.auto_nadamw}


def at_defaults(
  factory: Factory, initial_learning_rate: Optional[Any] = None
) -> optax.GradientTransformation:
  """``factory()``, or ``factory(initial_learning_rate=...)``: a tuning-free optimizer from its
  default initial rate, or from another one (the robustness check)."""
  if initial_learning_rate is None:
    return factory()
  return factory(initial_learning_rate=initial_learning_rate)


def warmup_cosine(
  optimizer: Callable[[optax.Schedule], optax.GradientTransformation], budget: int
) -> Callable[[Any], optax.GradientTransformation]:
  """``lr -> optimizer(schedule)``: linear warm-up over ``WARMUP_FRACTION`` of ``budget`` to
  ``lr``, cosine decay to 0 at ``budget``, the schedule of the tuned baselines.

  ``lr`` times a unit schedule, because optax's schedule branches on a concrete peak value and
  ``lr`` is traced (a grid value).
  """
  unit = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, max(1, int(WARMUP_FRACTION * budget)), budget, end_value=0.0
  )
  return lambda lr: optimizer(lambda count: lr * unit(count))


def _schedule_free_eval(params: Any, state: Any) -> Any:
  return optax.contrib.schedule_free_eval_params(state, params)


def _baseline(name: str, optimizer: Callable[[optax.Schedule], optax.GradientTransformation]):
  return Method(
    name, lambda lr, budget: warmup_cosine(optimizer, budget)(lr), needs="tuning", kind="baseline"
  )


def all_methods() -> list[Method]:
  """Every row, as ``Method(name, make(lr, budget) -> optimizer, kind=...)``: ``lr`` is traced (a
  grid value) or None; kind "baseline" (tuned, budget B), "peer" or "nag_optax" (self-tuning,
  1.5 B)."""
  out = [
    _baseline("optax.adamw (tuned)", optax.adamw),
    _baseline("optax.nadamw (tuned)", optax.nadamw),
    _baseline(
      "optax.sgd nesterov 0.9 (tuned)", lambda s: optax.sgd(s, momentum=0.9, nesterov=True)
    ),
  ]
  c = optax.contrib
  peers: list[tuple[str, Callable[[], optax.GradientTransformation], Any]] = [
    ("optax.contrib.prodigy()", c.prodigy, None),
    ("optax.contrib.dadapt_adamw()", c.dadapt_adamw, None),
    ("optax.contrib.dog()", c.dog, None),
    ("optax.contrib.mechanize(optax.adamw(1e-3))", lambda: c.mechanize(optax.adamw(1e-3)), None),
    ("optax.contrib.cocob()", c.cocob, None),
    ("optax.contrib.schedule_free_adamw()", c.schedule_free_adamw, _schedule_free_eval),
    ("optax.contrib.schedule_free_sgd()", c.schedule_free_sgd, _schedule_free_eval),
    ("optax.contrib.momo()", c.momo, None),
    ("optax.contrib.momo_adam()", c.momo_adam, None),
  ]
  out += [
    Method(n, (lambda factory: lambda lr, b: factory())(f), kind="peer", eval_params=e)
    for n, f, e in peers
  ]
  out += [
    Method(n, (lambda factory: lambda lr, b: at_defaults(factory, lr))(f), kind="nag_optax")
    for n, f in nag_factories().items()
  ]
  return out


def stop_lanes(budget: int, eval_every: int, run_steps: int) -> tuple[int, int]:
  """The traced values of the check's two lanes: the patience it gives the stop, in updates
  (``STOP_PATIENCE_FRACTION`` B, at least one evaluation interval), and one that a run of
  ``run_steps`` never reaches (the reference lane)."""
  return max(eval_every, int(STOP_PATIENCE_FRACTION * budget)), run_steps + 1


def _stop_config(factory: Factory) -> tuple[Callable[[Any], optax.GradientTransformation], str]:
  """(make(traced patience) -> optimizer, the keyword the patience goes to): the criteria a user
  would enable, the validation stop where the factory has one, else the training loss's patience,
  and ``STOP_OPTIONS``."""
  keyword = (
    "validation_patience"
    if "validation_patience" in inspect.signature(factory).parameters
    else "patience"
  )
  make = lambda h: factory(**{keyword: jnp.asarray(h, jnp.int32)}, **STOP_OPTIONS)
  return make, keyword


# method name -> make(traced patience) -> optimizer, with its stopping criteria enabled; the
# keyword its patience goes to; whether it reads the validation loss.
STOP_CONFIGS = {name: _stop_config(f)[0] for name, f in nag_factories().items()}
STOP_KEYWORDS = {name: _stop_config(f)[1] for name, f in nag_factories().items()}
STOP_READS_VALIDATION = {name: k.startswith("validation") for name, k in STOP_KEYWORDS.items()}


def long_run_methods() -> dict[str, Callable[[], optax.GradientTransformation]]:
  """Untuned defaults a new user would try, over a whole long run: name -> factory()."""
  out: dict[str, Callable[[], optax.GradientTransformation]] = {
    n: (lambda factory: lambda: at_defaults(factory))(f) for n, f in nag_factories().items()
  }
  out["optax.contrib.prodigy()"] = optax.contrib.prodigy
  out["optax.adamw(1e-3)"] = lambda: optax.adamw(1e-3)
  out["optax.sgd(0.1, 0.9, nesterov=True)"] = lambda: optax.sgd(0.1, 0.9, nesterov=True)
  return out
