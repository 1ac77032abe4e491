#!/usr/bin/env bash
# Detection load on the GPU: the batched NMS against torchvision, ByteTrack-format YOLOX-X checkpoints for the idle,
# crowd and worst loads, and `reidctl bench` at those loads: PyTorch with CUDA graphs (PYTORCH_LOADS), then PyTorch
# with torch.compile and the bundled Triton server in one run per load (COMBINED_LOADS). Run after
# `source scripts/gpu_setup.sh`; each step is bounded and logged, and a failed step does not stop the others.
# Usage: scripts/perf_loads.sh OUT_DIR   (ITERS, WARMUP, CAMERAS, PYTORCH_LOADS, COMBINED_LOADS, CLIENT_PROCESSES
# (processes sending Triton's requests, default 4), DEVICE, MODEL (extra model options, e.g. "--model-type nano
# --test-size 128x160" for a quick check on a CPU) override)
set -uo pipefail
# shellcheck disable=SC2086  # MODEL and LOAD_ARGS hold several options
out=${1:?output directory}
iters=${ITERS:-300}; warmup=${WARMUP:-30}; cameras=${CAMERAS:-1,16}
work=${WORK_DIR:-/tmp/reidctl-loads}; device=${DEVICE:-cuda}; model=${MODEL:---model-type mot17}
mkdir -p "$out" "$work"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"
checkpoint() { local files=("$work"/*_"$1".pth.tar); echo "${files[0]}"; }  # <model type>_<load>.pth.tar

[ -n "${SKIP_NMS:-}" ] || step nms_bench 120 python3 scripts/nms_bench.py --iters 200 --json "$out/nms_bench.json"
[ -n "${SKIP_NMS:-}" ] || step nms_bench_after_model 120 python3 scripts/nms_bench.py --iters 100 --model-ms 3
load_checkpoints
for load in ${PYTORCH_LOADS-worst idle crowd}; do
  step "bench_pytorch_$load" 150 reidctl bench --backends pytorch --device "$device" $model --model "$(checkpoint "$load")" \
    --iters "$iters" --warmup "$warmup" --cameras "$cameras" --output "$out/bench_pytorch_$load.json" --no-progress
done
printf 'detection:\n  compile: true\n' >"$work/compile.yaml"
for load in ${COMBINED_LOADS-worst idle crowd}; do  # PyTorch compiled and Triton in one run per load
  repo="$work/repo_$load"
  step "triton_start_$load" 240 reidctl setup-triton --repository "$repo" $model --model "$(checkpoint "$load")" \
    --device "$device" --start
  step "bench_$load" 300 reidctl bench --backends pytorch,triton -c "$work/compile.yaml" --device "$device" $model \
    --model "$(checkpoint "$load")" --iters "$iters" --warmup "$warmup" --cameras "$cameras" \
    --client-processes "${CLIENT_PROCESSES:-4}" --output "$out/bench_$load.json" --no-progress
  reidctl setup-triton --repository "$repo" --stop >>"$out/steps.txt" 2>&1
done
[ -n "${SKIP_NMS:-}" ] || step nms_gpu_tests 180 python3 -m pytest -q -p no:cacheprovider tests/engine/test_nms_kernels.py
