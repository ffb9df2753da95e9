"""Shared fixtures: float64 for precision tests, and a jitted run-to-target loop."""

import pytest

from tests.x64 import enable_x64


@pytest.fixture
def x64():
  """Run the test body with float64 enabled (precision tests only)."""
  with enable_x64(True):
    yield
