#!/usr/bin/env bash
# Camera-rate capacity on the GPU: 16 generated 1080p cameras at 30 FPS through `reidctl detect` with
# `compile: true`, an open-loop bench of PyTorch and the bundled Triton server at 16 cameras x 30 FPS with accuracy
# parity, and `reidctl recommend --cameras 16 --verify`. Run after `source scripts/gpu_setup.sh`; each step is
# bounded and logged, a failed step does not stop the others.
# Usage: scripts/perf_capacity.sh OUT_DIR   (FRAMES per clip at 30 FPS, SIZE of the clips, DEVICE; DETECTION: more
# lines of the config's detection section, e.g. $'  model_type: nano\n  test_size: [128, 160]' for a check on a CPU)
set -uo pipefail
out=${1:?output directory}
frames=${FRAMES:-300}; size=${SIZE:-1080x1920}; device=${DEVICE:-cuda}
work=${WORK_DIR:-/tmp/reidctl-capacity}
clips="$work/clips"
mkdir -p "$out" "$clips"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"
printf 'detection:\n  device: %s\n  compile: %s\n%s\n  triton:\n    repository: %s\n' \
  "$device" "$([ "$device" = cpu ] && echo false || echo true)" "${DETECTION:-}" "$work/repo" >"$work/config.yaml"
config=(-c "$work/config.yaml")

step clips 120 python3 scripts/make_clip.py "$clips/cam.mp4" --size "$size" --fps 30 --frames "$frames" --count 16
step detect_rt16_compile 150 reidctl detect "$clips"/cam*.mp4 "${config[@]}" --backend pytorch --realtime \
  --no-progress --mot "$work/rt16" --summary-json "$out/detect_pytorch_compile_rt16.json"
step triton_start 120 reidctl setup-triton "${config[@]}" --start
step bench_open16 200 reidctl bench "${config[@]}" -b pytorch,triton --source "$clips/cam01.mp4" --iters 20 --warmup 5 \
  --cameras 16 --fps 30 --seconds 3 --latency-ms 100 --parity --output "$out/bench_open16.json" --no-progress
step verify16 150 reidctl recommend "${config[@]}" --bench "$out/bench_open16.json" --cameras 16 --fps 30 \
  --latency-ms 100 --verify --seconds 5 --deploy "$out/deploy" --json "$out/recommend16.json"
reidctl setup-triton "${config[@]}" --stop >>"$out/steps.txt" 2>&1
