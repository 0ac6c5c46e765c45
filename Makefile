# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-all lint install install-test clean benchmarks qgis-deps qgis-plugin

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install --disable-pip-version-check -q -e '.[test,ray]'
	touch $@

install: $(VENV)/.stamp-base
install-test: $(VENV)/.stamp-test

## End-to-end demo on built-in synthetic data (no data needed, CPU).
demo: $(VENV)/.stamp-base
	$(VENV)/bin/rts demo demo_out --overwrite

## Fast offline test suite (CI runs this): the layering (import-linter), types (mypy), then pytest.
## Slow and GPU tests are skipped. QGIS (for tests/test_qgis_plugin.py) is installed first where it can be.
test: $(VENV)/.stamp-test lint qgis-deps
	$(PY) -m pytest -q -m "not slow and not gpu"

## Static checks: imports run downhill (DESIGN.md's layers), mypy on rtscli/, ruff.
lint: $(VENV)/.stamp-test
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(PY) -m ruff check rtscli tests benchmarks qgis_plugin

## Everything, slow tests included.
test-all: $(VENV)/.stamp-test
	$(PY) -m pytest -q

benchmarks: $(VENV)/.stamp-base
	$(PY) benchmarks/prepare_scale.py

clean:
	rm -rf demo_out bench_out .pytest_cache

## QGIS for the plugin's tests: Debian/Ubuntu's python3-qgis (qgis.core, Processing) and qgis (qgis_process),
## installed only when QGIS's Python lacks qgis.core and apt-get can install (root, or sudo without a password).
## Otherwise, or if the install fails, nothing fails here: the QGIS tests are skipped and say why.
## QGIS_DEPS=skip never installs. (bookworm, measured: about 230 MB downloaded, 1.2 GB on disk, 2 minutes.)
QGIS_PYTHON   ?= /usr/bin/python3
QGIS_PACKAGES ?= python3-qgis qgis
QGIS_DEPS     ?= auto
APT_INSTALL   := timeout 1200 apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $(QGIS_PACKAGES)
qgis-deps:
	@if [ "$(QGIS_DEPS)" = skip ]; then \
	  echo "qgis-deps: QGIS_DEPS=skip: not installing QGIS"; \
	elif $(QGIS_PYTHON) -c 'import qgis.core' >/dev/null 2>&1; then \
	  echo "qgis-deps: QGIS is installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "qgis-deps: no apt-get here: the QGIS tests will be skipped"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "qgis-deps: installing $(QGIS_PACKAGES) (apt-get)"; \
	  (timeout 600 apt-get update -q && DEBIAN_FRONTEND=noninteractive $(APT_INSTALL)) \
	    || echo "qgis-deps: installing QGIS failed: the QGIS tests will be skipped"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "qgis-deps: installing $(QGIS_PACKAGES) (sudo apt-get)"; \
	  (sudo -n timeout 600 apt-get update -q && sudo -n env DEBIAN_FRONTEND=noninteractive $(APT_INSTALL)) \
	    || echo "qgis-deps: installing QGIS failed: the QGIS tests will be skipped"; \
	else \
	  echo "qgis-deps: not root and no password-less sudo: the QGIS tests will be skipped"; \
	fi

## The QGIS plugin as a zip (Plugins > Manage and Install Plugins > Install from ZIP); also a release artifact.
qgis-plugin: $(VENV)/.stamp-base
	mkdir -p dist
	$(VENV)/bin/rts qgis-plugin -o dist/rts_qgis.zip --overwrite
