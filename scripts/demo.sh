#!/usr/bin/env bash
# The main job on built-in defaults: export the default model (YOLOX-X, mot17 layout) to ONNX, start the bundled
# Triton server, bench every backend available here on a generated clip, then recommend a backend for 4 cameras.
# On a CPU-only machine the iteration counts stay small; on a GPU pass e.g. ITERS=1000 WARMUP=100 CAMERAS=1,4,16.
set -euo pipefail
out=${DEMO_DIR:-runs/demo}
iters=${ITERS:-5}; warmup=${WARMUP:-1}; cameras=${CAMERAS:-1,4}
mkdir -p "$out"
python scripts/make_clip.py "$out/clip.avi" --frames 16
reidctl export-onnx --no-progress
reidctl setup-triton --repository "$out/model_repository" --start
trap 'reidctl setup-triton --repository "$out/model_repository" --stop' EXIT
reidctl bench --backends all --source "$out/clip.avi" --iters "$iters" --warmup "$warmup" --cameras "$cameras" \
  --output "$out/bench.json" --no-progress
reidctl recommend --cameras 4 --bench "$out/bench.json" --json "$out/recommendation.json"
