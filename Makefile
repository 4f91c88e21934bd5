# make run   — create .venv, install, run the default experiment on embedded data
# make test  — create .venv, install, run the test suite (slow tests excluded; make test-all for all)
# make docs  — install the docs extra, build the documentation site into build/docs (warnings fail)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# optional extras to install (CI adds ray: make test EXTRAS=test,ray)
EXTRAS ?= test

.PHONY: run test test-all venv bench lint clean docs

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

DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# tutorials: the notebook tests' executed copies (build/notebooks), executed first when stale;
# then headless-browser screenshots of the built pages, checked by tests/test_docs_site.py
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -b html -E -W --keep-going -q docs build/docs
	CROWDLEARN_DOCS_BUILT=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_docs_site.py

bench: $(STAMP)
	$(PY) benchmarks/fleet_throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check crowdlearn sim slicenet tests benchmarks notebooks

clean:
	rm -rf $(VENV) results build *.egg-info docs/_generated
