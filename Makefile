# make run   — create .venv, install, run the default experiment on embedded data
# make test  — create .venv, install, run the test suite (slow tests excluded; make test-all for all)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# optional extras to install (CI adds ray: make test EXTRAS=test,ray)
EXTRAS ?= test

.PHONY: run test test-all venv bench lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/crowdlearn run examples/default.toml --out results/default --overwrite

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/fleet_throughput.py

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check crowdlearn sim slicenet tests benchmarks

clean:
	rm -rf $(VENV) results build *.egg-info
