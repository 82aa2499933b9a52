# edgepipe: `make run` sets up a virtual environment and runs the whole pipeline on the bundled
# digits data; `make test` runs the fast test suite. Override TORCH to pick another torch build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EXTRAS ?= all,rtx,cuda12,dev,ray
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all test-core gate bench clean gpu-prepare

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: with a matching torch installed, pip keeps it instead of pulling the newest CUDA build.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/edgepipe run

# The formatter and linter, the floors of docs/architecture.md (import-linter's contracts in pyproject.toml),
# then the tests.
test: setup
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The light device install, built for real in a fresh venv: the core dependencies and TensorRT-RTX only.
test-core: setup
	$(BIN)/python -m pytest -q -s -m slow tests/test_core_install.py

# The accuracy-regression gate this repository's CI runs: the default pipeline against ci/baseline.json.
gate: setup
	$(BIN)/edgepipe run -o runs/ci
	$(BIN)/edgepipe check runs/ci/report.json --baseline ci/baseline.json --tolerances ci/tolerances.yaml

bench: setup
	$(BIN)/python benchmarks/zoo.py --keep runs/zoo
	$(BIN)/python benchmarks/precision.py runs/zoo
	$(BIN)/python benchmarks/latency.py --checkpoint runs/zoo/se_resnet.pt --work runs/latency --out docs/latency.md

# What a GPU machine without a package index needs (wheels, pycuda's source, TensorRT-RTX in two parts)
# into .gpu/; docs/gpu.md says which device calls carry it and run scripts/gpu-check.sh there.
gpu-prepare: setup
	PIP="$(BIN)/python -m pip" PYTHON=$(BIN)/python scripts/gpu-prepare.sh

clean:
	rm -rf $(VENV) .venv-timm runs .pytest_cache

# The optional timm environment: make test-timm.
include timm.mk
