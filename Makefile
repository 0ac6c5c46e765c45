# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-all lint install install-test clean benchmarks

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install --disable-pip-version-check -q -e '.[test]'
	touch $@

install: $(VENV)/.stamp-base
install-test: $(VENV)/.stamp-test

## End-to-end demo on built-in synthetic data (no data needed, CPU).
demo: $(VENV)/.stamp-base
	$(VENV)/bin/rts demo demo_out --overwrite

## Fast offline test suite (CI runs this): the layering (import-linter), types (mypy), then pytest.
## Slow and GPU tests are skipped.
test: $(VENV)/.stamp-test lint
	$(PY) -m pytest -q -m "not slow and not gpu"

## Static checks: imports run downhill (DESIGN.md's layers), mypy on rtscli/, ruff.
lint: $(VENV)/.stamp-test
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(PY) -m ruff check rtscli tests benchmarks

## Everything, slow tests included.
test-all: $(VENV)/.stamp-test
	$(PY) -m pytest -q

benchmarks: $(VENV)/.stamp-base
	$(PY) benchmarks/prepare_scale.py

clean:
	rm -rf demo_out bench_out .pytest_cache
