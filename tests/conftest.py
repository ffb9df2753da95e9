"""Shared fixtures: float64 for precision tests, and a jitted run-to-target loop."""

import jax
import pytest


@pytest.fixture
def x64():
  """Run the test body with float64 enabled (precision tests only)."""
  with jax.enable_x64(True):
    yield
