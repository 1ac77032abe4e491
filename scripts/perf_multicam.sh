#!/usr/bin/env bash
# Many cameras in one `reidctl detect` on the GPU: 16 generated 1080p MPEG-4 clips as 16 cameras, in real time at
# 30 FPS and as fast as the detector goes (with `reidctl bench`'s in-process 16-camera figure on the same frames
# in the same run), 4 cameras in real time through the bundled Triton server, one camera alone, and decoding.
# Run after `source scripts/gpu_setup.sh`; each step is bounded and logged, a failed step does not stop the others.
# Usage: scripts/perf_multicam.sh OUT_DIR   (FRAMES per clip at 30 FPS; SIZE, DEVICE and MODEL, e.g.
# "--model-type nano --test-size 128x160", for a quick check on a CPU)
set -uo pipefail
# shellcheck disable=SC2086  # MODEL holds several options
out=${1:?output directory}
frames=${FRAMES:-300}; size=${SIZE:-1080x1920}; device=${DEVICE:-cuda}; model=${MODEL:-}
work=${WORK_DIR:-/tmp/reidctl-multicam}
clips="$work/clips"
mkdir -p "$out" "$clips"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"

step clips 180 python3 scripts/make_clip.py "$clips/cam.mp4" --size "$size" --fps 30 --frames "$frames" --count 16
cams=("$clips"/cam*.mp4)
step detect_pytorch_rt16 120 reidctl detect "${cams[@]}" --backend pytorch --device "$device" $model --realtime --no-progress \
  --mot "$work/rt16" --summary-json "$out/detect_pytorch_rt16.json"
step detect_pytorch_fast16 120 reidctl detect "${cams[@]}" --backend pytorch --device "$device" $model --no-progress \
  --mot "$work/fast16" --summary-json "$out/detect_pytorch_fast16.json"
step bench_pytorch_16 150 reidctl bench --backends pytorch --device "$device" $model --source "${cams[0]}" --iters 300 --warmup 30 \
  --cameras 16 --output "$out/bench_pytorch_16_1080p.json" --no-progress
step detect_pytorch_one 60 reidctl detect "${cams[0]}" --device "$device" $model --no-progress --mot "$work/one.txt" \
  --summary-json "$out/detect_pytorch_one.json"
step triton_start 240 reidctl setup-triton --repository "$work/repo" --device "$device" $model --start
step detect_triton_rt4 120 reidctl detect "${cams[@]:0:4}" --backend triton $model --realtime --no-progress \
  --mot "$work/triton4" --summary-json "$out/detect_triton_rt4.json"
reidctl setup-triton --repository "$work/repo" --stop >>"$out/steps.txt" 2>&1
step decode_mp4v 120 python3 scripts/decode_bench.py --clip "${cams[0]}" --readers 1,4,16 --decoders opencv \
  --workers thread --json "$out/decode_mp4v.json"
