"""Sphinx configuration for the nag_optax documentation site (``make docs``)."""

import filecmp
import importlib
import pathlib
import re
import shutil
import sys

import optax
from sphinx.util import logging
from sphinx.util.typing import stringify_annotation

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not some other installed copy
nag_optax = importlib.import_module("nag_optax")  # from the checkout, now first on the path

_LOGGER = logging.getLogger(__name__)

project = "nag_optax"
author = "the nag_optax authors"
copyright = "the nag_optax authors"
release = version = nag_optax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",
]

# --- the notebooks -------------------------------------------------------------------------------
# The executed notebooks live in ../notebooks (committed with their outputs) and Sphinx reads only
# what is under docs/. Copy them in here before Sphinx looks for sources (a copy, not a symlink:
# symlinks do not survive every clone or archive), and only when changed, so an unchanged
# notebook is not read again. docs/notebooks/ is a build product (git-ignored).
NOTEBOOKS_SRC = ROOT / "notebooks"
NOTEBOOKS_DST = DOCS / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOKS_SRC.glob("*.ipynb"))
NOTEBOOKS_DST.mkdir(exist_ok=True)
for name in NOTEBOOKS:
  if not (NOTEBOOKS_DST / name).exists() or not filecmp.cmp(
    NOTEBOOKS_SRC / name, NOTEBOOKS_DST / name, shallow=False
  ):
    shutil.copyfile(NOTEBOOKS_SRC / name, NOTEBOOKS_DST / name)
for stale in NOTEBOOKS_DST.glob("*.ipynb"):
  if stale.name not in NOTEBOOKS:
    stale.unlink()

nb_execution_mode = "off"  # render the committed outputs; running them is `make notebooks`
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# --- the API reference ---------------------------------------------------------------------------
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show `DEFAULT_PLATEAU`, not the repr of an optax object
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_param = False  # "gtol, rtol: ..." stays one entry instead of one copy per name
add_module_names = False
python_maximum_signature_line_length = 100  # longer signatures get one parameter per line

# --- HTML ----------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"nag_optax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": True,
}
html_static_path = []


# --- every public name is on the API page ---------------------------------------------------------
def _check_public_api(app, env):
  """An error when a name in ``nag_optax.__all__`` has no entry in the API reference."""
  del app
  documented = set(env.get_domain("py").objects)
  public = [f"nag_optax.{name}" for name in nag_optax.__all__]
  public += [f"nag_optax.contrib.{name}" for name in nag_optax.contrib.__all__]
  missing = [name for name in public if name not in documented]
  if missing:
    _LOGGER.error(
      "public names missing from the API reference (docs/api.md): %s",
      ", ".join(missing),
      type="nag_optax",
      subtype="api",
    )


_NAMEDTUPLE_FIELD_DOC = re.compile(r"^Alias for field number \d+$")


def _check_docstring(app, what, name, obj, options, lines):
  """Warn (an error under ``-W``) when a public object renders without a docstring of its own.

  A NamedTuple field documented only by a plain ``# comment`` renders as Python's "Alias for
  field number N"; writing the comment as ``#: ...`` makes it the field's docstring.
  """
  del app, obj, options
  if not name.startswith("nag_optax.") or what == "module":
    return
  text = "\n".join(lines).strip()
  if not text or _NAMEDTUPLE_FIELD_DOC.match(text):
    hint = " (write the field's comment as '#: ...')" if text else ""
    _LOGGER.warning(
      "%s %s has no docstring%s", what, name, hint, type="nag_optax", subtype="docstring"
    )


# optax.ScalarOrSchedule as autodoc writes it in a signature: a union three lines long.
_SCALAR_OR_SCHEDULE = stringify_annotation(optax.ScalarOrSchedule, "smart")


def _short_type_aliases(app, what, name, obj, options, signature, return_annotation):
  """Show ``optax.ScalarOrSchedule`` by its name instead of the union it expands to."""
  del app, what, name, obj, options
  if signature:
    signature = signature.replace(_SCALAR_OR_SCHEDULE, "optax.ScalarOrSchedule")
  return signature, return_annotation


def setup(app):
  app.connect("autodoc-process-signature", _short_type_aliases)
  app.connect("autodoc-process-docstring", _check_docstring)
  app.connect("env-check-consistency", _check_public_api)
