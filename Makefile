# Two entry points on a fresh machine: `make test` and `make bench` (and `make lint`, `make test-min`).
# Each creates .venv if missing and installs what it needs (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick
VENV_MIN := .venv-min
# Test-extra packages held at their declared floors too in the minimum-versions run (jax, jaxlib
# and optax, the runtime dependencies, always are).
MIN_PINNED := flax chex
XLA_CPU_DEVICES := XLA_FLAGS="--xla_force_host_platform_device_count=8"

.PHONY: test test-min lint bench bench-full wheel-check notebooks docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.test-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.bench-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

$(VENV)/.docs-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

test: $(VENV)/.test-stamp
	$(XLA_CPU_DEVICES) $(PY) -m pytest -q $(PYTEST_ARGS)

# pyright resolves the imports of nag_optax/, tests/ and benchmarks/, so their extras come too.
$(VENV)/.lint-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[lint,test,bench]"
	touch $@

# The formatter check, the linter and the type checker (.pre-commit-config.yaml runs the same).
# `$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .` fixes most of what they flag.
lint: $(VENV)/.lint-stamp
	status=0; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/pyright --pythonpath $(PY) || status=1; \
	exit $$status

# The tests against the oldest versions pyproject.toml declares: a venv of its own with jax, jaxlib,
# optax and $(MIN_PINNED) at exactly their `>=` floors (.ci/min_versions.py reads them, so the pins
# cannot drift from pyproject.toml); the other test dependencies resolve as pip picks them. The
# package's tests and doctests only: benchmarks/ is development tooling on the current versions.
$(VENV_MIN)/.test-stamp: pyproject.toml .ci/min_versions.py
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) .ci/min_versions.py $(MIN_PINNED) > $(VENV_MIN)/constraints.txt
	$(VENV_MIN)/bin/python -m pip install -q -c $(VENV_MIN)/constraints.txt -e ".[test]"
	touch $@

test-min: $(VENV_MIN)/.test-stamp
	@echo "pinned at their floors: $$(tr '\n' ' ' < $(VENV_MIN)/constraints.txt)"
	$(XLA_CPU_DEVICES) $(VENV_MIN)/bin/python -m pytest -q tests nag_optax $(PYTEST_ARGS)

bench: $(VENV)/.bench-stamp
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-full: $(VENV)/.bench-stamp
	$(PY) -m benchmarks --full

# Re-execute the notebooks in place (full size) so the committed copies carry fresh outputs.
notebooks: $(VENV)/.test-stamp
	MPLBACKEND=Agg $(PY) notebooks/execute.py

# The documentation site in docs/_build/html: API reference from the docstrings, the notebooks
# rendered from their committed outputs (not re-run), the benchmark results. Warnings are errors.
docs: $(VENV)/.docs-stamp
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Build the wheel a user would install, install it into a fresh venv (not the repo's), import it.
wheel-check: | $(PY)
	rm -rf dist build/wheel-venv
	$(PY) -m pip wheel -q . --no-deps -w dist
	$(PY) -c "import glob, zipfile; names = zipfile.ZipFile(glob.glob('dist/nag_optax-*.whl')[0]).namelist(); \
	  assert 'nag_optax/py.typed' in names, 'the wheel lacks py.typed'; \
	  assert any(n.endswith('/LICENSE') for n in names), 'the wheel lacks LICENSE'"
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install -q dist/nag_optax-*.whl
	cd build && wheel-venv/bin/python -c "import jax.numpy as jnp, nag_optax; \
	  sol = nag_optax.minimize(lambda x: jnp.sum((x - 1.0) ** 2), jnp.zeros(3)); \
	  assert nag_optax.__file__.find('wheel-venv') > 0, nag_optax.__file__; \
	  print('wheel OK:', nag_optax.__version__, sol)"

clean:
	rm -rf $(VENV) $(VENV_MIN) build dist *.egg-info bench_out docs/_build docs/notebooks
