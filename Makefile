# edgepipe: `make run` sets up a virtual environment and runs the whole pipeline on the bundled
# digits data; `make test` runs the fast test suite. Override TORCH to pick another torch build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EXTRAS ?= rtx,dev
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: with a matching torch installed, pip keeps it instead of pulling the newest CUDA build.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/edgepipe run

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python benchmarks/zoo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
