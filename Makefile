# make bench   set up (once) and run `python -m fusednn bench`
# make test    set up (once) and run the whole test suite
# make check   set up (once) and run every op once against its reference
# make deps-check  does the dependency set resolve on plain PyPI (pip's configuration off)?
#
# Set-up: a virtual environment in .venv (it sees the system's packages, so an
# installed torch is kept), the dependencies, and fusednn built in place. The
# package is rebuilt only when csrc/ or setup.py change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS_STAMP  := $(VENV)/.fusednn-deps
BUILD_STAMP := $(VENV)/.fusednn-build
CSRC := $(shell find csrc -type f 2>/dev/null)

.PHONY: setup test test-fast bench check info deps-check clean

setup: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(DEPS_STAMP): $(PY) tools/ensure_deps.py
	$(PY) tools/ensure_deps.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

bench: setup
	$(PY) -m fusednn bench $(BENCH_ARGS)

check: setup
	$(PY) -m fusednn check

deps-check: $(PY)
	$(PY) tools/ensure_deps.py --check-resolves

info: setup
	$(PY) -m fusednn info

clean:
	rm -rf build python/fusednn/*.so *.egg-info $(BUILD_STAMP)
