#!/usr/bin/env bash
# Accuracy parity and camera capacity at each detection load on the GPU: YOLOX checkpoints for the idle, crowd and
# worst loads (scripts/make_load_checkpoints.py); at the crowd load its ONNX export, the bundled Triton server serving
# it and `reidctl bench --parity` over PyTorch fp32/fp16, ONNX Runtime and Triton; then at each load in
# CAPACITY_LOADS `reidctl recommend --max-cameras` for PyTorch (torch.compile) and Triton at 30 FPS within 100 ms.
# Run after `source scripts/gpu_setup.sh`; each step is bounded and logged, a failed step does not stop the others.
# Usage: scripts/perf_parity.sh OUT_DIR   (DEVICE; LOAD_ARGS for make_load_checkpoints.py; CAPACITY_LOADS (default
# "idle worst"); PARITY=0 skips the parity run; CAMERA_LIMIT; RUN_SECONDS per open-loop run; DETECTION: more lines of the config's detection section, e.g.
# $'  model_type: nano\n  test_size: [128, 160]' for a check on a CPU)
set -uo pipefail
out=${1:?output directory}
device=${DEVICE:-cuda}; work=${WORK_DIR:-/tmp/reidctl-parity}
mkdir -p "$out" "$work"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"
# config LOAD COMPILE: the config file of that load's checkpoint, written once
config() {
  local checkpoints=("$work"/*_"$1".pth.tar) file="$work/config_$1.yaml"
  printf 'detection:\n  model_path: %s\n  device: %s\n  compile: %s\n%s\n  onnx_path: %s\n  triton:\n    repository: %s\n' \
    "${checkpoints[0]}" "$device" "$2" "${DETECTION:-}" "$work/$1.onnx" "$work/repo_$1" >"$file"
  echo "$file"
}

load_checkpoints
if [ "${PARITY:-1}" != 0 ]; then
  crowd=$(config crowd false)
  step export_onnx 120 reidctl export-onnx -c "$crowd" --no-progress
  step triton_start_parity 120 reidctl setup-triton -c "$crowd" --start
  step bench_parity 150 reidctl bench -c "$crowd" -b pytorch,onnxruntime,triton --parity --iters 10 --warmup 2 \
    --cameras 1 --output "$out/bench_parity_crowd.json" --no-progress
  reidctl setup-triton -c "$crowd" --stop >>"$out/steps.txt" 2>&1
fi
compile=$([ "$device" = cpu ] && echo false || echo true)
for load in ${CAPACITY_LOADS-idle worst}; do
  file=$(config "$load" "$compile")
  step "triton_start_$load" 120 reidctl setup-triton -c "$file" --start
  step "max_cameras_$load" 240 reidctl recommend -c "$file" --cameras 16 --fps 30 --latency-ms 100 --max-cameras \
    -b pytorch,triton --camera-limit "${CAMERA_LIMIT:-64}" --seconds "${RUN_SECONDS:-3}" --json "$out/capacity_$load.json"
  reidctl setup-triton -c "$file" --stop >>"$out/steps.txt" 2>&1
done
