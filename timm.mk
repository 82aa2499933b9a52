# Optional timm environment, included by the Makefile (`include timm.mk`), or run alone with
# `make -f timm.mk test-timm`. timm imports torchvision, and the lean default torch build has no
# matching torchvision, so timm is tested in its own virtual environment: torch 2.14.1 with
# torchvision 0.29.1 (a CUDA build, about 5.5 GB, that runs on the CPU as well).
PYTHON ?= python3
TIMM_VENV ?= .venv-timm
TIMM_BIN := $(TIMM_VENV)/bin
TIMM_TORCH ?= torch==2.14.1 torchvision==0.29.1
TIMM_STAMP := $(TIMM_VENV)/.installed

.PHONY: setup-timm test-timm

$(TIMM_STAMP): pyproject.toml timm.mk
	$(PYTHON) -m venv $(TIMM_VENV)
	# torch and torchvision first, as a matching pair, so edgepipe's "torch>=2.4" keeps them.
	$(TIMM_BIN)/python -m pip install -q $(TIMM_TORCH)
	$(TIMM_BIN)/python -m pip install -q -e ".[rtx,dev,timm]"
	touch $@

setup-timm: $(TIMM_STAMP)

# Tests marked @pytest.mark.timm: timm models at their real input size through build, weights,
# data config, ONNX export and ONNX Runtime parity.
test-timm: setup-timm
	$(TIMM_BIN)/python -m pytest -q -m timm
