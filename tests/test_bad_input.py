"""Bad hyperparameters are rejected at construction with an error naming the argument.

Every public factory, every numeric hyperparameter, each of: a number written as a string, a
bool, a complex number, NaN and infinity. Nothing may be accepted silently (a string that
"works" until the first update, or a NaN that corrupts the state).
"""

import inspect
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax

BAD_VALUES = {
  "string": "0.1",
  "bool": True,
  "complex": 1 + 1j,
  "nan": math.nan,
  "inf": math.inf,
  "list": [0.1],
  "vector": np.array([0.1, 0.2]),
  "none": None,  # only where the default is a number (None is a documented choice elsewhere)
}

# factory -> (the factory, its required arguments)
FACTORIES = {
  "nesterov": (nag_optax.nesterov, {}),
  "scale_by_curvature": (nag_optax.scale_by_curvature, {}),
  "scale_by_backtracking": (nag_optax.scale_by_backtracking, {}),
  "scale_by_spectral": (nag_optax.scale_by_spectral, {}),
  "scale_by_hypergradient": (nag_optax.contrib.scale_by_hypergradient, {}),
  "scale_by_distance": (nag_optax.scale_by_distance, {}),
  "stop_when": (nag_optax.stop_when, {"inner": optax.identity()}),
  "nag": (nag_optax.nag, {"learning_rate": 0.1}),
  "auto_nag": (nag_optax.auto_nag, {}),
  "auto_nag_sgd": (nag_optax.auto_nag_sgd, {}),
  "auto_nadamw": (nag_optax.auto_nadamw, {}),
  "anneal_after_progress": (
    nag_optax.anneal_after_progress,
    {"plateau": optax.contrib.reduce_on_plateau()},
  ),
}
# Numeric arguments that take a number only in some configurations (checked where they apply).
NOT_NUMERIC = {"condition_number"}
# Values a bad-value kind includes that are documented choices of one argument.
DOCUMENTED = {("max_relative_step", "inf")}  # math.inf: no cap


def _numeric_parameters(factory, required):
  out = []
  for name, param in inspect.signature(factory).parameters.items():
    if name in NOT_NUMERIC:
      continue
    default = param.default if name not in required else required[name]
    annotation = str(param.annotation)
    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    numeric_optional = default is None and ("float" in annotation or "int" in annotation)
    if numeric_default or numeric_optional:
      out.append(name)
  return out


def _accepts_none(factory, name):
  param = inspect.signature(factory).parameters[name]
  return (
    param.default is None or "Optional" in str(param.annotation) or "None" in str(param.annotation)
  )


CASES = [
  (f, p, b)
  for f, (factory, required) in FACTORIES.items()
  for p in _numeric_parameters(factory, required)
  for b in BAD_VALUES
  if not (b == "none" and _accepts_none(factory, p)) and (p, b) not in DOCUMENTED
]


def test_the_case_list_covers_the_hyperparameters():
  names = {(f, p) for f, p, _ in CASES}
  for expected in [
    ("nag", "learning_rate"),
    ("nag", "momentum"),
    ("auto_nadamw", "b2"),
    ("stop_when", "gtol"),
    ("auto_nag_sgd", "learning_rate"),
    ("scale_by_distance", "decay"),
    ("auto_nag", "safety"),
  ]:
    assert expected in names, expected


@pytest.mark.parametrize("factory_name,parameter,bad", CASES)
def test_bad_numbers_are_rejected_naming_the_argument(factory_name, parameter, bad):
  factory, required = FACTORIES[factory_name]
  kwargs = dict(required)
  kwargs[parameter] = BAD_VALUES[bad]
  with pytest.raises((TypeError, ValueError), match=parameter):
    tx = factory(**kwargs)
    tx.init(jnp.zeros(2))  # an error at init is acceptable too, never at the first update


@pytest.mark.parametrize("name", ["nag", "auto_nag", "auto_nag_sgd", "auto_nadamw"])
def test_integer_params_are_rejected_at_init_naming_the_leaf(name):
  tx = nag_optax.nag(0.1) if name == "nag" else getattr(nag_optax, name)()
  with pytest.raises(TypeError, match=r"\['steps'\].*int32"):
    tx.init({"w": jnp.zeros(3), "steps": jnp.arange(3, dtype=jnp.int32)})


@pytest.mark.parametrize("name", ["nag", "auto_nag", "auto_nag_sgd", "auto_nadamw"])
def test_an_empty_pytree_is_a_valid_no_op(name):
  tx = nag_optax.nag(0.1) if name == "nag" else getattr(nag_optax, name)()
  updates, _ = tx.update({}, tx.init({}), {})
  assert updates == {}


def test_minimize_rejects_nan_initial_params_naming_the_leaf():
  with pytest.raises(ValueError, match=r"\['b'\].*NaN"):
    nag_optax.minimize(
      lambda p: jnp.sum(p["a"] ** 2 + p["b"] ** 2),
      {"a": jnp.ones(2), "b": jnp.array([1.0, jnp.nan])},
    )


def test_minimize_rejects_a_non_scalar_loss():
  with pytest.raises(ValueError, match="scalar loss.*shape \\(3,\\)"):
    nag_optax.minimize(lambda x: (x - 1.0) ** 2, jnp.zeros(3))


def test_minimize_warns_when_the_tolerance_is_below_bfloat16_resolution():
  with pytest.warns(UserWarning, match="rtol=1e-06 is below the resolution"):
    nag_optax.minimize(lambda x: jnp.sum((x - 1.0) ** 2), jnp.zeros(3, jnp.bfloat16), max_steps=5)


@pytest.mark.parametrize("factory_name", ["stop_when", "minimize"])
def test_step_counts_beyond_int32_are_rejected_naming_the_argument(factory_name):
  with pytest.raises(ValueError, match="max_steps"):
    if factory_name == "stop_when":
      nag_optax.stop_when(optax.sgd(0.1), max_steps=2**31)
    else:
      nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), max_steps=10**10)


@pytest.mark.parametrize("argument", ["value", "validation_loss"])
def test_non_scalar_losses_are_rejected_naming_the_argument(argument):
  tx = nag_optax.auto_nadamw(validation_patience=5)
  params = jnp.ones(3)
  state = tx.init(params)
  with pytest.raises(ValueError, match=argument):
    tx.update(jnp.ones(3), state, params, **{argument: jnp.ones(3)})
  with pytest.raises(ValueError, match=argument):
    tx.update(jnp.ones(3), state, params, **{argument: jnp.ones(1)})


BLOCKS = {
  "nesterov": lambda: nag_optax.nesterov(),
  "scale_by_curvature": lambda: nag_optax.scale_by_curvature(),
  "scale_by_backtracking": lambda: nag_optax.scale_by_backtracking(),
  "scale_by_spectral": lambda: nag_optax.scale_by_spectral(),
  "scale_by_hypergradient": lambda: nag_optax.contrib.scale_by_hypergradient(),
  "scale_by_distance": lambda: nag_optax.scale_by_distance(),
  "average_iterates": lambda: nag_optax.average_iterates(optax.sgd(0.1)),
  "stop_when": lambda: nag_optax.stop_when(optax.sgd(0.1)),
  "nag": lambda: nag_optax.nag(0.1),
  "auto_nag": lambda: nag_optax.auto_nag(),
  "auto_nag_sgd": lambda: nag_optax.auto_nag_sgd(),
  "auto_nadamw": lambda: nag_optax.auto_nadamw(),
  "anneal_after_progress": lambda: nag_optax.anneal_after_progress(
    optax.contrib.reduce_on_plateau()
  ),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_python_float_params_work_as_in_optax(name):
  # optax.sgd(0.1).init(1.0) works; so must every transformation of the package, with the same
  # step as from a 0-d array.
  tx = BLOCKS[name]()
  from_float, _ = tx.update(2.0, tx.init(1.0), 1.0, value=1.0)
  x = jnp.asarray(1.0)
  from_array, _ = tx.update(jnp.asarray(2.0), tx.init(x), x, value=jnp.asarray(1.0))
  assert jnp.shape(from_float) == () and bool(jnp.isfinite(from_float))
  np.testing.assert_allclose(np.asarray(from_float), np.asarray(from_array), rtol=1e-6)
  assert optax.apply_updates(1.0, from_float) is not None


@pytest.mark.parametrize("name", BLOCKS)
def test_updates_that_do_not_match_the_params_are_rejected_naming_both(name):
  tx = BLOCKS[name]()
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"updates and params must be trees of the same structure"):
    tx.update({"a": jnp.ones(2)}, state, params, value=1.0)
  with pytest.raises(ValueError, match=r"at \['b'\] updates have shape \(4,\) and params \(3,\)"):
    tx.update({"a": jnp.ones(2), "b": jnp.ones(4)}, state, params, value=1.0)


@pytest.mark.parametrize("rtol", [1.0, 2.0])
def test_a_relative_tolerance_of_one_or_more_is_rejected(rtol):
  # ||g|| <= rtol ||g_0|| with rtol >= 1 holds at the first step: a run that never runs.
  with pytest.raises(ValueError, match=r"rtol must lie in \[0.0, 1.0\)"):
    nag_optax.auto_nag(rtol=rtol)
  with pytest.raises(ValueError, match="rtol"):
    nag_optax.minimize(lambda x: jnp.sum(x**2), jnp.ones(2), rtol=rtol)


@pytest.mark.parametrize(
  "kwargs,extra,unfed",
  [
    (dict(patience=3), {}, "patience=3 never fires without the `value`"),
    (dict(ftol=1e-6, patience=3), {}, "ftol=1e-06 and patience=3 never fire"),
    (dict(validation_patience=5), {"value": 1.0}, "validation_patience=5 never fires .*`valid"),
  ],
)
def test_criteria_that_cannot_fire_without_their_extra_argument_warn(kwargs, extra, unfed):
  tx = nag_optax.stop_when(optax.sgd(0.1), **kwargs)
  params = jnp.ones(2)
  with pytest.warns(UserWarning, match=unfed):
    tx.update(params, tx.init(params), params, **extra)


def test_criteria_fed_their_extra_arguments_do_not_warn():
  import warnings

  tx = nag_optax.stop_when(optax.sgd(0.1), ftol=1e-6, patience=3, validation_patience=5)
  params = jnp.ones(2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.update(params, tx.init(params), params, value=1.0, validation_loss=1.0)


# Every argument that must be a transformation: a TypeError naming it, one wording everywhere.
TRANSFORMATION_ARGUMENTS = {
  "stop_when(inner)": lambda bad: nag_optax.stop_when(bad),
  "average_iterates(inner)": lambda bad: nag_optax.average_iterates(bad),
  "scale_by_distance(direction)": lambda bad: nag_optax.scale_by_distance(direction=bad),
  "scale_by_distance(plateau)": lambda bad: nag_optax.scale_by_distance(plateau=bad),
  "anneal_after_progress(plateau)": lambda bad: nag_optax.anneal_after_progress(bad),
  "auto_nag_sgd(plateau)": lambda bad: nag_optax.auto_nag_sgd(plateau=bad),
  "spectral_then_nesterov(curvature)": lambda bad: nag_optax.spectral_then_nesterov(
    nag_optax.scale_by_spectral(), bad, nag_optax.nesterov()
  ),
  "minimize(optimizer)": lambda bad: nag_optax.minimize(jnp.sum, jnp.ones(2), bad),
}


@pytest.mark.parametrize("where", list(TRANSFORMATION_ARGUMENTS))
def test_a_non_transformation_is_a_type_error_naming_the_argument(where):
  name = where[where.index("(") + 1 : -1]
  with pytest.raises(TypeError, match=rf"^{name} must be an optax GradientTransformation"):
    TRANSFORMATION_ARGUMENTS[where]("adam")


def test_every_update_that_needs_params_says_so_in_one_wording():
  for tx in (
    nag_optax.scale_by_curvature(),
    nag_optax.scale_by_spectral(),
    nag_optax.scale_by_distance(),
    nag_optax.average_iterates(optax.sgd(0.1)),
    nag_optax.contrib.scale_by_hypergradient(),
  ):
    with pytest.raises(ValueError, match=r"needs params \(.+\): call update\(updates, state"):
      tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
