"""Execute the example notebooks end to end (small sizes: NAG_OPTAX_NOTEBOOK_SMALL=1)."""

import json
import os
import pathlib
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("quickstart.ipynb", "flax_training.ipynb", "closed_form_quadratics.ipynb")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """A "python3" kernelspec that runs this interpreter, found first through JUPYTER_PATH.

  Whatever kernelspecs the machine has, the notebooks then run in the environment under test.
  """
  spec_dir = tmp_path / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (nag_optax tests)",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv(
    "JUPYTER_PATH",
    os.pathsep.join(p for p in (str(tmp_path), os.environ.get("JUPYTER_PATH", "")) if p),
  )
  monkeypatch.setenv("NAG_OPTAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_env):
  path = NOTEBOOKS_DIR / name
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
  )
  client.execute()
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors, errors


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_shows_its_outputs(name):
  # A Colab or GitHub reader sees the stored outputs before running anything (`make notebooks`
  # refreshes them): each notebook was run top to bottom in one session, without errors, and
  # shows its figures.
  nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  counts = [c.get("execution_count") for c in code]
  assert counts == list(range(1, len(code) + 1)), counts
  outputs = [o for c in code for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
