# Two entry points on a fresh machine: `make test` and `make bench`.
# Each creates .venv if missing and installs what it needs (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick

.PHONY: test bench bench-full wheel-check notebooks clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.test-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.bench-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

test: $(VENV)/.test-stamp
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.bench-stamp
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-full: $(VENV)/.bench-stamp
	$(PY) -m benchmarks --full

# Re-execute the notebooks in place (full size) so the committed copies carry fresh outputs.
notebooks: $(VENV)/.test-stamp
	MPLBACKEND=Agg $(PY) notebooks/execute.py

# Build the wheel a user would install, install it into a fresh venv (not the repo's), import it.
wheel-check: | $(PY)
	rm -rf dist build/wheel-venv
	$(PY) -m pip wheel -q . --no-deps -w dist
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install -q dist/nag_optax-*.whl
	cd build && wheel-venv/bin/python -c "import jax.numpy as jnp, nag_optax; \
	  sol = nag_optax.minimize(lambda x: jnp.sum((x - 1.0) ** 2), jnp.zeros(3)); \
	  assert nag_optax.__file__.find('wheel-venv') > 0, nag_optax.__file__; \
	  print('wheel OK:', nag_optax.__version__, sol)"

clean:
	rm -rf $(VENV) build dist *.egg-info bench_out
