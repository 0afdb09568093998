# make bench   set up (once) and run `python -m fusednn bench`
# make test    set up (once) and run the whole test suite
# make check   set up (once) and run every op once against its reference
# make deps-check  does the dependency set resolve on plain PyPI (pip's configuration off)?
# make sanitize    the C++-backed tests against an ASan + UBSan build of fusednn._C
#                  (built into build/sanitize/, beside the normal one); fails on any report
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

.PHONY: setup test test-fast bench check info deps-check sanitize clean

setup: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(DEPS_STAMP): $(PY) tools/ensure_deps.py
	$(PY) tools/ensure_deps.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

# The tests run in one worker process per core (pytest-xdist), each with one torch thread.
TEST_WORKERS ?= auto

test: setup
	$(PY) -m pytest -p xdist -n $(TEST_WORKERS) tests

test-fast: setup
	$(PY) -m pytest -p xdist -n $(TEST_WORKERS) tests -m "not slow"

bench: setup
	$(PY) -m fusednn bench $(BENCH_ARGS)

check: setup
	$(PY) -m fusednn check

deps-check: $(PY)
	$(PY) tools/ensure_deps.py --check-resolves

# Python is not instrumented, so gcc's sanitizer runtimes are preloaded into it. Leak
# checking is off (the interpreter leaks by design); the first report ends the run
# with a non-zero status. The GPU stays hidden: the sanitized build is CPU-only.
SANITIZE_DIR   := build/sanitize
SANITIZE_STAMP := $(SANITIZE_DIR)/.fusednn-build
SANITIZE_ENV = FUSEDNN_EXTENSION_DIR=$(CURDIR)/$(SANITIZE_DIR)/fusednn \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 CUDA_VISIBLE_DEVICES=
# The C++-backed tests, by name so that they are found wherever they live. --capture=sys
# keeps reports (written to the stderr file descriptor) visible when a report aborts the
# run. test_cuda_compile.py is left out: it only runs nvcc and g++, which crash with the
# ASan runtime preloaded, and loads nothing of the extension. The module tests' gradgradchecks
# are left out too: their second derivatives run through the Python reference (minutes under
# ASan for no C++ coverage that test_grad lacks).
SANITIZE_TESTS = tests -k "(lstm or gru or rnn or recurrent or cpp) and not test_gradgrad" --ignore=tests/test_cuda_compile.py \
	--capture=sys

$(SANITIZE_STAMP): $(DEPS_STAMP) setup.py $(CSRC)
	FUSEDNN_SANITIZE=1 $(PY) setup.py --quiet build_ext
	touch $@

sanitize: $(SANITIZE_STAMP)
	$(SANITIZE_ENV) $(PY) -m pytest $(SANITIZE_TESTS)

info: setup
	$(PY) -m fusednn info

clean:
	rm -rf build python/fusednn/*.so *.egg-info $(BUILD_STAMP)
