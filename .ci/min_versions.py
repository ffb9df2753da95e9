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


def _parse(requirement: str) -> tuple[str, str, str]:
  """(name, version specifiers, environment marker) of a PEP 508 requirement."""
  match = _REQUIREMENT.match(requirement)
  if match is None:
    raise SystemExit(f"cannot parse the requirement {requirement!r}")
  name, _, specifiers, marker = match.groups()
  return name, specifiers, marker or ""


def _floor(requirement: str) -> tuple[str, str]:
  name, specifiers, marker = _parse(requirement)
  if marker:
    raise SystemExit(f"{requirement!r}: a floor under an environment marker is not supported")
  floor = _FLOOR.search(specifiers)
  if floor is None:
    raise SystemExit(f"{requirement!r} declares no '>=' floor to test")
  return name, floor.group(1)


def constraints(pyproject: dict, extra_packages: list[str]) -> list[str]:
  """``name==floor`` lines: every runtime dependency, then the named optional packages."""
  project = pyproject["project"]
  pins = dict(_floor(r) for r in project["dependencies"])
  optional: dict[str, list[str]] = {}
  for requirements in project.get("optional-dependencies", {}).values():
    for requirement in requirements:
      optional.setdefault(_canonical(_parse(requirement)[0]), []).append(requirement)
  for package in extra_packages:
    if _canonical(package) not in optional:
      raise SystemExit(f"{package} is in no optional-dependencies list of pyproject.toml")
    floors = {_floor(r) for r in optional[_canonical(package)]}
    if len(floors) > 1:
      raise SystemExit(f"{package} has different floors in the extras: {sorted(floors)}")
    name, floor = floors.pop()
    pins[name] = floor
  return [f"{name}=={floor}" for name, floor in pins.items()]


def main(argv: list[str]) -> None:
  path = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
  with path.open("rb") as f:
    pyproject = tomllib.load(f)
  print("\n".join(constraints(pyproject, argv)))


if __name__ == "__main__":
  main(sys.argv[1:])
