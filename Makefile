# The README's commands. The virtual environment lives in .venv/ and is reused while
# requirements.lock and pyproject.toml are unchanged (a stamp file tracks them).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
export DBT_SEND_ANONYMOUS_USAGE_STATS := False
export STHELAR_HOME ?= $(CURDIR)/sthelar_home

.PHONY: setup demo test ui bench clean-home browser

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, exactly this version: it is the local CPU wheel (any other spec pulls CUDA packages)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "environment ready in $(VENV)/"

demo: setup
	$(VENV)/bin/sthelar demo

# The browser tests drive Debian's chromium through its chromedriver (no download at run time).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { echo "installing Debian's chromium + chromium-driver"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: setup browser
	$(PY) -m pytest -n 2 --dist loadfile -q

ui: setup
	$(VENV)/bin/sthelar ui

bench: setup
	$(PY) benchmarks/run.py

clean-home:
	rm -rf "$(STHELAR_HOME)"
