# Two entry points on a fresh machine: `make test` and `make bench`.
# Each creates .venv if missing and installs what it needs (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick

.PHONY: test bench bench-full clean

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

clean:
	rm -rf $(VENV) build *.egg-info bench_out
