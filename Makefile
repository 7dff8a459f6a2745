# Everything installs into .venv on first use: `make compare` the package with the CLI extra,
# `make test` with the development extra too (pytest, hypothesis, triton for the interpreter tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch: on this machine kind pip takes it from the local wheel cache.
TORCH ?= torch==2.13.0

.PHONY: install test compare explain bench lint clean

$(VENV)/.torch:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	touch $@

$(VENV)/.cli: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e ".[cli]"
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.cli

install: $(VENV)/.dev

test: $(VENV)/.dev
	$(PY) -m ruff check src tests
	$(PY) -m pytest -n 2 -q

compare: $(VENV)/.cli
	$(VENV)/bin/labelsmooth compare

explain: $(VENV)/.cli
	$(VENV)/bin/labelsmooth explain --classes 5 --smoothing 0.1 --convention non_target --target 4

bench: $(VENV)/.cli
	$(VENV)/bin/labelsmooth bench

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
