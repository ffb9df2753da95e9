"""Conventions the repository keeps, checked so they cannot drift.

The package says what its code does and why, never which benchmark measured what (figures live
in the benchmark results and the docs); no issue numbers anywhere; no private name crosses a
module boundary inside the package (what two modules share is a named function of a third).
"""

import ast
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nag_optax"


def _tracked_text_files():
  try:
    names = subprocess.run(
      ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  binary = (".png", ".npz", ".ipynb")
  return [ROOT / n for n in names if not n.endswith(binary) and (ROOT / n).is_file()]


def test_the_package_cites_no_benchmark_results():
  for path in PACKAGE.rglob("*.py"):
    text = path.read_text()
    for banned in ("benchmarks/", "RESULTS.md"):
      assert banned not in text, f"{path.relative_to(ROOT)} mentions {banned}"


def test_no_issue_numbers_in_the_repository():
  pattern = re.compile(r"(?<![\w&])#\d+\b|\b[Ii]ssue\s+#?\d+")
  found = []
  for path in _tracked_text_files():
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if pattern.search(line):
        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
  assert not found, "\n".join(found)


def test_no_private_name_is_imported_across_modules():
  found = []
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nag_optax"):
        for alias in node.names:
          if alias.name.startswith("_") and alias.name != "_src":
            found.append(f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}")
          modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
      ):
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not found, "\n".join(found)
