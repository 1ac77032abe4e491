#!/usr/bin/env bash
# GPU measurements behind docs/PERFORMANCE.md: ONNX export + verification of YOLOX-X, the bundled Triton server
# with the PyTorch model on the GPU, and `reidctl bench` over every backend. Run after `source scripts/gpu_setup.sh`.
# Usage: scripts/perf_gpu.sh OUT_DIR   (ITERS, WARMUP, CAMERAS, ORT_ITERS override the sizes)
set -euo pipefail
out=${1:?output directory}
iters=${ITERS:-1000}; warmup=${WARMUP:-100}; cameras=${CAMERAS:-1,4,16}; ort_iters=${ORT_ITERS:-50}
work=${WORK_DIR:-/tmp/reidctl-perf}
mkdir -p "$out" "$work"
reidctl() { python3 -m reidctl "$@"; }

for precision in fp16 fp32; do  # the JSON holds the export time and the ONNX Runtime-vs-PyTorch difference
  reidctl export-onnx --model-type mot17 --"$precision" --output "$work/x_$precision.onnx" --no-progress --json \
    > "$out/export_$precision.json"
done

repo="$work/model_repository"
reidctl setup-triton --repository "$repo" --model-type mot17 --device cuda --start
trap 'python3 -m reidctl setup-triton --repository "$repo" --stop' EXIT
reidctl bench --backends pytorch,tensorrt,triton --device cuda --iters "$iters" --warmup "$warmup" \
  --cameras "$cameras" --output "$out/bench.json" --no-progress

printf 'detection:\n  onnx_path: %s\n' "$work/x_fp32.onnx" > "$work/ort.yaml"
reidctl bench --backends onnxruntime -c "$work/ort.yaml" --iters "$ort_iters" --warmup 5 --cameras 1,4 \
  --output "$out/bench_onnxruntime_cpu.json" --no-progress
reidctl recommend --cameras 4 --bench "$out/bench.json" --json "$out/recommend_4.json"
