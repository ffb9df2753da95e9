"""Print pip constraints that pin the dependency floors declared in pyproject.toml.

Every requirement of ``[project] dependencies`` and every package named on the command line
(looked up in ``[project.optional-dependencies]``) must declare a ``>=`` floor; it is printed as
``name==floor``. ``make test-min`` installs the package against these constraints, so the floors
that users are promised are the versions CI runs: they cannot drift from pyproject.toml.

Usage: python .ci/min_versions.py [PACKAGE ...] > constraints.txt
"""

import pathlib
import re
import sys
import tomllib

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")
_FLOOR = re.compile(r">=\s*([^,\s]+)")


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _floor(requirement: str) -> tuple[str, str]:
  match = _REQUIREMENT.match(requirement)
  if match is None:
    raise SystemExit(f"cannot parse the requirement {requirement!r}")
  name, _, specifiers, marker = match.groups()
  if marker:
    raise SystemExit(f"{requirement!r}: environment markers are not supported here")
  floor = _FLOOR.search(specifiers)
  if floor is None:
    raise SystemExit(f"{requirement!r} declares no '>=' floor to test")
  return name, floor.group(1)


def constraints(pyproject: dict, extra_packages: list[str]) -> list[str]:
  """``name==floor`` lines: every runtime dependency, then the named optional packages."""
  project = pyproject["project"]
  pins = dict(_floor(r) for r in project["dependencies"])
  optional = {}
  for requirements in project.get("optional-dependencies", {}).values():
    for requirement in requirements:
      name, floor = _floor(requirement)
      previous = optional.setdefault(_canonical(name), (name, floor))
      if previous[1] != floor:
        raise SystemExit(f"{name} has two floors in the extras: {previous[1]} and {floor}")
  for package in extra_packages:
    if _canonical(package) not in optional:
      raise SystemExit(f"{package} is in no optional-dependencies list of pyproject.toml")
    name, floor = optional[_canonical(package)]
    pins[name] = floor
  return [f"{name}=={floor}" for name, floor in pins.items()]


def main(argv: list[str]) -> None:
  path = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
  with path.open("rb") as f:
    pyproject = tomllib.load(f)
  print("\n".join(constraints(pyproject, argv)))


if __name__ == "__main__":
  main(sys.argv[1:])
