"""The example notebooks run end to end and print what their committed copies show.

Each notebook is executed afresh, at the size it is committed at, the way ``make notebooks``
executes it (``notebooks/execute.py``: a kernel on this interpreter that imports this
checkout). What every code cell prints must match the committed outputs line for line: the
words exactly, integers (step counts, restarts) exactly, other numbers to 6 significant digits,
and numbers below 1e-12 in magnitude (differences at float64 rounding level, such as the
distance between two implementations of the same iterates) only in being that small. A cell
tagged ``environment`` (the package versions) is run but not compared. The figures are not
compared; the numbers they are drawn from mostly are. The comparison needs the versions of the
packages the figures depend on that the committed run recorded (``make notebooks`` records
them); under others (``make test-min``) the notebooks are run and checked for errors only.
"""

import importlib.util
import math
import pathlib
import re

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("quickstart.ipynb", "flax_training.ipynb", "closed_form_quadratics.ipynb")
NOT_COMPARED_TAG = "environment"
ROUNDING_LEVEL = 1e-12
SIGNIFICANT_DIGITS = 6
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _executor():
  spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS_DIR / "execute.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _printed(nb):
  """What each compared code cell printed (stdout), as (cell index, lines)."""
  out = []
  for index, cell in enumerate(nb.cells):
    if cell.cell_type != "code" or NOT_COMPARED_TAG in cell.metadata.get("tags", []):
      continue
    text = "".join(
      o.get("text", "")
      for o in cell.get("outputs", [])
      if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    out.append((index, text.splitlines()))
  return out


def _same_number(committed, fresh):
  if re.fullmatch(r"[-+]?\d+", committed) and re.fullmatch(r"[-+]?\d+", fresh):
    return int(committed) == int(fresh)
  a, b = float(committed), float(fresh)
  if abs(a) < ROUNDING_LEVEL or abs(b) < ROUNDING_LEVEL:
    return abs(a) < ROUNDING_LEVEL and abs(b) < ROUNDING_LEVEL
  return math.isclose(a, b, rel_tol=0.5 * 10 ** (1 - SIGNIFICANT_DIGITS))


def _same_line(committed, fresh):
  if NUMBER.sub("#", committed) != NUMBER.sub("#", fresh):
    return False
  return all(map(_same_number, NUMBER.findall(committed), NUMBER.findall(fresh)))


def test_same_line_compares_numbers_as_documented():
  assert _same_line("steps       : 79", "steps       : 79")
  assert not _same_line("steps       : 79", "steps       : 80")
  assert not _same_line("test acc 0.9778", "test acc 0.9750")
  assert _same_line("f* = 0.0598294718818051", "f* = 0.05982947188180511")
  assert not _same_line("f* = 0.0598294718818051", "f* = 0.0598310")
  assert _same_line("max |a - b| = 8.2e-14", "max |a - b| = 1.1e-13")
  assert not _same_line("max |a - b| = 8.2e-14", "max |a - b| = 3.0e-06")
  assert not _same_line("stop reason : RTOL", "stop reason : GTOL")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_prints_what_is_committed(name):
  path = NOTEBOOKS_DIR / name
  committed = nbformat.read(path, as_version=4)
  executor = _executor()
  fresh = executor.execute(path)
  errors = [
    o
    for c in fresh.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors, errors
  recorded = committed.metadata.get(executor.METADATA_KEY)
  if recorded != executor.versions():
    pytest.skip(
      f"ran without errors; the outputs were committed with {recorded}, this is "
      f"{executor.versions()}: the same figures are not to be expected"
    )
  for (index, old), (_, new) in zip(_printed(committed), _printed(fresh), strict=True):
    assert len(old) == len(new) and all(map(_same_line, old, new)), (
      f"{name}, cell {index}: the committed outputs are not those of a fresh run "
      f"(`make notebooks` refreshes them; then check the prose around them).\n"
      f"committed: {old}\nfresh:     {new}"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_shows_its_outputs(name):
  # A reader of the rendered notebook (the docs site) sees the stored outputs: each notebook was
  # run top to bottom in one session, without errors, and shows its figures.
  nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  counts = [c.get("execution_count") for c in code]
  assert counts == list(range(1, len(code) + 1)), counts
  outputs = [o for c in code for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
  assert any(lines for _, lines in _printed(nb)), "nothing printed to compare"
