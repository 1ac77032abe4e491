#!/usr/bin/env bash
# Scale-out on one host: 16 and 32 cameras on one GPU and on two, in the same run — `reidctl bench`'s pipeline runs
# (closed loop) in process, then the bundled Triton server with an instance on GPU 0 only and on every GPU — and one
# `reidctl detect` of 32 generated 1080p cameras spread over both GPUs. Run after `source scripts/gpu_setup.sh` on a
# host with two GPUs; each step is bounded and logged, a failed step does not stop the others.
# Usage: scripts/perf_multigpu.sh OUT_DIR   (FRAMES per clip, SIZE of the clips, ITERS, DEVICES: the device lists
# compared (empty: no in-process run), e.g. "cpu cpu,cpu" with DETECTION options "--model-type nano --test-size
# 128x160" for a check on a CPU;
# GPU_SETS: the Triton instance placements compared; FRAME_SETS: "clip" (the 1080p clip's frames, letterboxed by
# the client) and/or "synthetic" (bench's 640x640 frames, which put the least host work on the client);
# CLIENT_PROCESSES: processes sending the Triton runs' requests (default 4, for both placements))
set -uo pipefail
out=${1:?output directory}
frames=${FRAMES:-150}; size=${SIZE:-1080x1920}; iters=${ITERS:-600}; devices=${DEVICES-cuda:0 cuda:0,1}
model=${DETECTION:-}; work=${WORK_DIR:-/tmp/reidctl-multigpu}
clips="$work/clips"
mkdir -p "$clips"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"

step clips 240 python3 scripts/make_clip.py "$clips/cam.mp4" --size "$size" --fps 30 --frames "$frames" --count 32
cams=("$clips"/cam*.mp4)
frame_sets=${FRAME_SETS:-clip synthetic}
frames_of() { [ "$1" = clip ] && echo "--source ${cams[0]}"; }  # bench's synthetic frames: no option
for device in $devices; do
  tag=${device//[:,]/_}
  for set in $frame_sets; do
    # shellcheck disable=SC2086,SC2046  # DETECTION and frames_of hold several options
    step "bench_${tag}_$set" 200 reidctl bench --backends pytorch --device "$device" $model $(frames_of "$set") \
      --iters "$iters" --warmup 60 --cameras 16,32 --output "$out/bench_${tag}_$set.json" --no-progress
  done
done
if [ -n "$devices" ]; then  # the last device list: every GPU
  # shellcheck disable=SC2086
  step "detect_${tag}_32" 150 reidctl detect "${cams[@]}" --backend pytorch --device "$device" $model --no-progress \
    --mot "$work/mot_${tag}_32" --summary-json "$out/detect_${tag}_32.json"
fi
for gpus in ${GPU_SETS-0 all}; do
  # shellcheck disable=SC2086
  step "triton_start_gpus_$gpus" 200 reidctl setup-triton --repository "$work/repo" $model --gpus "$gpus" --start
  for set in $frame_sets; do
    # shellcheck disable=SC2086,SC2046
    step "bench_triton_gpus_${gpus}_$set" 150 reidctl bench --backends triton $model $(frames_of "$set") \
      --iters "$iters" --warmup 60 --cameras 16,32 --client-processes "${CLIENT_PROCESSES:-4}" \
      --output "$out/bench_triton_gpus_${gpus}_$set.json" --no-progress
  done
  reidctl setup-triton --repository "$work/repo" --stop >>"$out/steps.txt" 2>&1
done
