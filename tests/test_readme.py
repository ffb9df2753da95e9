"""The README's Python examples run as written, in order, and print what their comments say.

Every fenced ``python`` block of README.md is executed in one namespace (later blocks use names
from earlier ones, as a reader would); a ``print(...)  # -> text`` line must print ``text``
(ignoring whitespace). Blocks that need a package outside the test extras (the JAXopt
migration example) are skipped by name.
"""

import contextlib
import io
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SKIP_IF_MENTIONS = ("jaxopt",)


def _blocks():
  with open(README) as f:
    text = f.read()
  return re.findall(r"```python\n(.*?)```", text, re.S)


def _normalise(s):
  """Whitespace-insensitive, so NumPy's column padding (``[1. 1.  ]``) does not matter."""
  return re.sub(r"\s+", "", s)


def test_readme_has_examples():
  assert len(_blocks()) >= 3


def test_readme_examples_run_and_print_what_they_say():
  namespace = {}
  checked = 0
  for block in _blocks():
    if any(word in block for word in SKIP_IF_MENTIONS):
      continue
    expected = [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s*#\s*->\s*(.+)$", block, re.M)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(block, README, "exec"), namespace)
    for text in expected:
      assert _normalise(text) in _normalise(out.getvalue()), (text, out.getvalue())
      checked += 1
  assert checked >= 1
  if "optimizer" in namespace:  # the minibatch example ran to its own stop, jitted
    import nag_optax

    assert bool(nag_optax.should_stop(namespace["optimizer"].opt_state))


if __name__ == "__main__":
  pytest.main([__file__])
