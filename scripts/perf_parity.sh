#!/usr/bin/env bash
# Accuracy parity and camera capacity under a crowd detection load on the GPU: a crowd-load YOLOX checkpoint
# (scripts/make_load_checkpoints.py), its ONNX export, the bundled Triton server serving it, `reidctl bench --parity`
# over PyTorch fp32/fp16, ONNX Runtime and Triton, then `reidctl recommend --max-cameras` at 30 FPS within 100 ms.
# Run after `source scripts/gpu_setup.sh`; each step is bounded and logged, a failed step does not stop the others.
# Usage: scripts/perf_parity.sh OUT_DIR   (DEVICE; LOAD_ARGS for make_load_checkpoints.py; DETECTION: more lines of
# the config's detection section, e.g. $'  model_type: nano\n  test_size: [128, 160]' for a check on a CPU)
set -uo pipefail
out=${1:?output directory}
device=${DEVICE:-cuda}; work=${WORK_DIR:-/tmp/reidctl-parity}
mkdir -p "$out" "$work"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"

# shellcheck disable=SC2086  # LOAD_ARGS holds several options
step load_checkpoints 120 python3 scripts/make_load_checkpoints.py --output-dir "$work" ${LOAD_ARGS:-}
crowd=("$work"/*_crowd.pth.tar)
printf 'detection:\n  model_path: %s\n  device: %s\n%s\n  tensorrt:\n    onnx_path: %s\n  triton:\n    repository: %s\n' \
  "${crowd[0]}" "$device" "${DETECTION:-}" "$work/crowd.onnx" "$work/repo" >"$work/config.yaml"
config=(-c "$work/config.yaml")
step export_onnx 120 reidctl export-onnx "${config[@]}" --no-progress
step triton_start 120 reidctl setup-triton "${config[@]}" --start
step bench_parity 150 reidctl bench "${config[@]}" -b pytorch,onnxruntime,triton --parity --iters 10 --warmup 2 \
  --cameras 1 --output "$out/bench_parity_crowd.json" --no-progress
step max_cameras 200 reidctl recommend "${config[@]}" --bench "$out/bench_parity_crowd.json" --cameras 16 --fps 30 \
  --latency-ms 100 --max-cameras -b pytorch,triton --camera-limit 48 --seconds 2 --json "$out/capacity_crowd.json"
reidctl setup-triton "${config[@]}" --stop >>"$out/steps.txt" 2>&1
