#!/usr/bin/env bash
# Triton on the GPU: the bundled server with YOLOX-X (mot17 layout, fp16, torch.compile'd python model) and
# `reidctl bench --backends triton` at 1, 4 and 16 concurrent camera streams. Run after `source scripts/gpu_setup.sh`.
# Usage: scripts/perf_triton.sh OUT_DIR   (ITERS, WARMUP, CAMERAS and SETUP_ARGS override the defaults)
set -euo pipefail
out=${1:?output directory}
iters=${ITERS:-1000}; warmup=${WARMUP:-100}; cameras=${CAMERAS:-1,4,16}
repo=${WORK_DIR:-/tmp/reidctl-perf}/model_repository
mkdir -p "$out"
started=$(date +%s)
# shellcheck disable=SC2086  # SETUP_ARGS holds several options
python3 -m reidctl setup-triton --repository "$repo" --model-type mot17 --device cuda ${SETUP_ARGS:-} --start
echo "server ready after $(( $(date +%s) - started )) s" | tee "$out/server_start.txt"
trap 'python3 -m reidctl setup-triton --repository "$repo" --stop' EXIT
python3 -m reidctl bench --backends triton --iters "$iters" --warmup "$warmup" --cameras "$cameras" \
  --output "$out/bench_triton.json" --no-progress
