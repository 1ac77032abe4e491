#!/usr/bin/env bash
# Prepare an offline GPU machine that already has torch/torchvision/onnx/onnxruntime/opencv:
# install the remaining wheels from .whl/ (see scripts/fetch_wheels.sh) and run reidctl from this tree.
# Usage: source scripts/gpu_setup.sh, then python3 scripts/perf.py SUITE OUT_DIR (docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install --quiet --no-index --no-deps .whl/*.whl 2>&1 | grep -v -i "warning" || true  # the interpreter's own pip
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
