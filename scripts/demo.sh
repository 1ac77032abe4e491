#!/usr/bin/env bash
# The main job on built-in defaults: export the model to ONNX, start the bundled Triton server, bench every backend
# available here on a generated clip, then recommend a backend for 4 cameras.
# On a GPU: the default config (YOLOX-X, mot17 layout, 640x640); pass e.g. ITERS=1000 WARMUP=100 CAMERAS=1,4,16.
# Without one: configs/cpu.yaml (YOLOX-nano at 416x416), a model that serves on a CPU.
set -euo pipefail
out=${DEMO_DIR:-runs/demo}
mkdir -p "$out"
if python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  config=${CONFIG:-configs/config.yaml}; iters=${ITERS:-200}; warmup=${WARMUP:-20}; cameras=${CAMERAS:-1,4,16}
else
  config=${CONFIG:-configs/cpu.yaml}; iters=${ITERS:-40}; warmup=${WARMUP:-3}; cameras=${CAMERAS:-1,4}
  echo "no CUDA GPU here: the demo runs YOLOX-nano at 416x416 ($config); on a GPU it runs YOLOX-X at 640x640"
fi
python scripts/make_clip.py "$out/clip.avi" --frames 16
reidctl export-onnx -c "$config" --no-progress
reidctl setup-triton -c "$config" --repository "$out/model_repository" --start
trap 'reidctl setup-triton -c "$config" --repository "$out/model_repository" --stop' EXIT
reidctl bench -c "$config" --backends all --source "$out/clip.avi" --iters "$iters" --warmup "$warmup" \
  --cameras "$cameras" --output "$out/bench.json" --no-progress
reidctl recommend -c "$config" --cameras 4 --bench "$out/bench.json" --json "$out/recommendation.json"
