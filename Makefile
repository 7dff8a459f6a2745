# Everything installs into .venv; `make test` and `make compare` set it up on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch: on this machine kind pip takes it from the local wheel cache.
TORCH ?= torch==2.13.0

.PHONY: install test compare explain bench lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m ruff check src tests
	$(PY) -m pytest -n 2 -q

compare: install
	$(VENV)/bin/labelsmooth compare

explain: install
	$(VENV)/bin/labelsmooth explain --classes 5 --smoothing 0.1 --convention non_target --target 4

bench: install
	$(VENV)/bin/labelsmooth bench

lint: install
	$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
