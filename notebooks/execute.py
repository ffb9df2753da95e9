"""Execute the notebooks in place, so the committed copies show the outputs of a fresh run.

Run from the repository root with the test extras installed: ``make notebooks`` (all of them) or
``python notebooks/execute.py quickstart.ipynb``. ``tests/test_notebooks.py`` runs them the
same way (:func:`execute`) and compares what they print with the committed outputs.
"""

import contextlib
import importlib.metadata
import json
import os
import pathlib
import sys
import tempfile

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# The packages whose versions the printed figures depend on; recorded in each notebook's metadata
# at execution, so that a comparison knows whether the same figures are to be expected.
VERSIONED = ("jax", "jaxlib", "optax", "flax", "numpy", "scikit-learn")
METADATA_KEY = "executed_with"


def versions() -> dict:
  """The versions of ``VERSIONED`` in this interpreter (the one the kernel runs)."""
  return {name: importlib.metadata.version(name) for name in VERSIONED}


@contextlib.contextmanager
def kernel_environment():
  """A "python3" kernel that runs this interpreter and imports nag_optax from this checkout.

  The kernelspec is found first through JUPYTER_PATH, whatever kernelspecs the machine has; the
  checkout goes first on the kernel's PYTHONPATH, so that another installed copy (an editable
  install of another worktree, say) is not the one the notebooks run; figures render without a
  display (MPLBACKEND=Agg). XLA_FLAGS is dropped: the notebooks run on XLA's default devices, as
  a reader runs them (``make test`` asks for 8 virtual CPU devices, which changes the rounding
  of some float32 reductions and so the figures of a long float32 run).
  """
  saved = dict(os.environ)
  with tempfile.TemporaryDirectory() as jupyter_path:
    spec_dir = pathlib.Path(jupyter_path) / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (nag_optax checkout)",
      "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    paths = {
      "JUPYTER_PATH": [jupyter_path, os.environ.get("JUPYTER_PATH", "")],
      "PYTHONPATH": [str(ROOT), os.environ.get("PYTHONPATH", "")],
    }
    for name, entries in paths.items():
      os.environ[name] = os.pathsep.join(p for p in entries if p)
    os.environ["MPLBACKEND"] = "Agg"
    os.environ.pop("XLA_FLAGS", None)
    try:
      yield
    finally:
      os.environ.clear()
      os.environ.update(saved)


def execute(path: pathlib.Path) -> nbformat.NotebookNode:
  """The notebook at ``path``, executed top to bottom in a fresh kernel (not written back), with
  the versions it ran with in its metadata."""
  nb = nbformat.read(path, as_version=4)
  with kernel_environment():
    nbclient.NotebookClient(
      nb,
      timeout=1200,
      kernel_name="python3",
      record_timing=False,  # no timestamps in the committed copies: they would change every run
      resources={"metadata": {"path": str(path.parent)}},
    ).execute()
  nb.metadata[METADATA_KEY] = versions()
  return nb


def main(names):
  for name in names or sorted(p.name for p in HERE.glob("*.ipynb")):
    path = HERE / name
    nbformat.write(execute(path), path)
    print(f"executed {name}")


if __name__ == "__main__":
  main(sys.argv[1:])
