# The README's commands. The virtual environment lives in .venv/ and is reused while
# requirements.lock, constraints.txt and pyproject.toml are unchanged (stamp files track them).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell cat requirements.lock constraints.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(LOCK_HASH)
DICOMIZER_VENV := .venv-wsidicomizer
DICOMIZER_STAMP := $(DICOMIZER_VENV)/.installed-$(shell cat tests/envs/wsidicomizer.lock 2>/dev/null | sha1sum | cut -c1-12)
# every install is pinned by the lock (exact versions) and the constraints (torch, dbt-core)
PIP_PINNED := $(PY) -m pip install -q -c constraints.txt -c requirements.lock
export DBT_SEND_ANONYMOUS_USAGE_STATS := False
export STHELAR_HOME ?= $(CURDIR)/sthelar_home
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-test demo test test-fast lint typecheck ui bench clean-home browser postgres wsidicomizer

setup: $(STAMP)

$(STAMP): requirements.lock constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, exactly this version: it is the local CPU wheel (any other spec pulls CUDA packages)
	$(PY) -m pip install -q torch==2.13.0
	# the runtime dependencies of pyproject.toml, at the versions in requirements.lock
	$(PIP_PINNED) -e .
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "environment ready in $(VENV)/"

# the `test` extra (pytest, pytest-xdist, selenium, ruff) on top, pinned by the same lock
setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) $(DICOMIZER_STAMP)
	$(PIP_PINNED) -e ".[test]"
	@touch $@

# wsidicomizer writes the DICOM WSI test scans (synth/he_formats.py). It pins an older wsidicom (and
# marshmallow 3) than the platform's, so it gets its own environment, pinned by tests/envs/wsidicomizer.lock;
# its JPEG transcoder needs Debian's libturbojpeg0.
wsidicomizer: $(DICOMIZER_STAMP)

$(DICOMIZER_STAMP): tests/envs/wsidicomizer.lock
	@ls /usr/lib/*/libturbojpeg.so.0 >/dev/null 2>&1 || \
	  { echo "installing Debian's libturbojpeg0"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libturbojpeg0 >/dev/null; }
	@test -x $(DICOMIZER_VENV)/bin/python || $(PYTHON) -m venv $(DICOMIZER_VENV)
	$(DICOMIZER_VENV)/bin/python -m pip install -q --no-deps -r tests/envs/wsidicomizer.lock
	@rm -f $(DICOMIZER_VENV)/.installed-*
	@touch $@

demo: setup
	$(VENV)/bin/sthelar demo

# The browser tests drive Debian's chromium through its chromedriver (no download at run time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { echo "installing Debian's chromium + chromium-driver"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The Postgres lineage tests start their own throw-away server from Debian's postgresql binaries.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { echo "installing Debian's postgresql"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

lint: setup-test
	$(VENV)/bin/ruff check .

typecheck: setup-test
	$(VENV)/bin/mypy

# everything: ruff, mypy, and every test (real daemon, webserver, chromium, Postgres, training); CI runs this
test: setup-test browser postgres lint typecheck
	$(PY) -m pytest -n 2 --dist loadfile -q

# the inner loop: ruff, mypy, and the tests not marked slow (no daemon, browser, Postgres or training)
test-fast: setup-test lint typecheck
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

ui: setup
	$(VENV)/bin/sthelar ui

bench: setup
	$(PY) benchmarks/run.py

clean-home:
	rm -rf "$(STHELAR_HOME)"
