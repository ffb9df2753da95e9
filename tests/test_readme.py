"""The README's Python examples run as written, in order, and print what their comments say.

Every fenced ``python`` block of README.md is executed in one namespace (later blocks use names
from earlier ones, as a reader would); each ``print(...)  # -> text`` line must print ``text``
on a line of its own, in the order of the prints (ignoring whitespace). Blocks that need a
package outside the test extras (the JAXopt migration example) are skipped by name. Every
function the README jit-compiles (``jax.jit``, ``nnx.jit``) must be traced once: a second trace
is a recompilation a reader's loop would pay for, e.g. an argument that changes from a Python
float to an array.
"""

import collections
import contextlib
import functools
import io
import os
import re

import jax
import pytest
from flax import nnx

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SKIP_IF_MENTIONS = ("jaxopt",)


def _blocks():
  with open(README) as f:
    text = f.read()
  return re.findall(r"```python\n(.*?)```", text, re.S)


def _normalise(s):
  """Whitespace-insensitive, so NumPy's column padding (``[1. 1.  ]``) does not matter."""
  return re.sub(r"\s+", "", s)


def _counting_traces(jit, traces):
  """``jit`` that counts, for each function defined in README.md, how often it is traced.

  The count is a side effect of the Python function, which runs only while ``jit`` traces it;
  functions defined elsewhere (the libraries' own) pass through unchanged.
  """

  @functools.wraps(jit)
  def counting_jit(fun=None, *args, **kwargs):
    if fun is None:  # used as @jit(...) with arguments
      return lambda f: counting_jit(f, *args, **kwargs)
    code = getattr(fun, "__code__", None)
    if code is not None and code.co_filename == README:
      inner = fun

      @functools.wraps(inner)
      def fun(*fun_args, **fun_kwargs):
        traces[inner.__name__] += 1
        return inner(*fun_args, **fun_kwargs)

    return jit(fun, *args, **kwargs)

  return counting_jit


def test_readme_has_examples():
  assert len(_blocks()) >= 3


def test_readme_examples_run_and_print_what_they_say(monkeypatch):
  traces = collections.Counter()
  monkeypatch.setattr(jax, "jit", _counting_traces(jax.jit, traces))
  monkeypatch.setattr(nnx, "jit", _counting_traces(nnx.jit, traces))
  namespace = {}
  checked = 0
  for block in _blocks():
    if any(word in block for word in SKIP_IF_MENTIONS):
      continue
    expected = [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s*#\s*->\s*(.+)$", block, re.M)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(block, README, "exec"), namespace)
    lines = [_normalise(line) for line in out.getvalue().splitlines()]
    for text in expected:  # in order, each on a line of its own
      while lines and _normalise(text) not in lines[0]:
        lines.pop(0)
      assert lines, (text, out.getvalue())
      lines.pop(0)
      checked += 1
  assert checked >= 1
  # The Optax loop's step and the Flax loop's train_step ran, each compiled once.
  assert {"step", "train_step"} <= set(traces), traces
  retraced = {name: n for name, n in traces.items() if n != 1}
  assert not retraced, f"README functions traced more than once: {retraced}"
  if "optimizer" in namespace:  # the minibatch example ran to its own stop, jitted
    import nag_optax

    assert bool(nag_optax.should_stop(namespace["optimizer"].opt_state))


if __name__ == "__main__":
  pytest.main([__file__])
