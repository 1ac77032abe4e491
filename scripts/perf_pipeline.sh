#!/usr/bin/env bash
# The deployment's pipeline on the GPU, per detection load: `reidctl detect` of N generated 1080p MPEG-4 clips as N
# cameras, in real time at 30 FPS and flat out, with the MOT and JSON-lines outputs on (and flat out without any), beside
# `reidctl bench --source`'s in-process figure on the same frames in the same run; the same cameras through the
# bundled Triton server. Run after `source scripts/gpu_setup.sh`; each step is bounded and logged, a failed step does
# not stop the others. Usage: scripts/perf_pipeline.sh OUT_DIR PART
#   PART pytorch: idle and crowd (LOADS) through PyTorch with torch.compile, and the worst load flat out
#   PART triton:  the same cameras through the bundled server (compiled server model), idle and crowd
# CAMERAS (16), FRAMES per clip (240), SIZE (1080x1920), DEVICE (cuda), MODEL (e.g. "--model-type nano --test-size
# 128x160" with DEVICE=cpu for a quick check) and LOADS override.
set -uo pipefail
# shellcheck disable=SC2086  # MODEL and LOAD_ARGS hold several options
out=${1:?output directory}; part=${2:?pytorch or triton}
cameras=${CAMERAS:-16}; frames=${FRAMES:-240}; size=${SIZE:-1080x1920}; device=${DEVICE:-cuda}
model=${MODEL:---model-type mot17}; loads=${LOADS:-idle crowd}
work=${WORK_DIR:-/tmp/reidctl-pipeline}
mkdir -p "$out" "$work/clips"
# shellcheck source=scripts/perf_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/perf_common.sh"
checkpoint() { local files=("$work"/*_"$1".pth.tar); echo "${files[0]}"; }  # <model type>_<load>.pth.tar

compgen -G "$work/clips/cam*.mp4" >/dev/null ||
  step clips 240 python3 scripts/make_clip.py "$work/clips/cam.mp4" --size "$size" --fps 30 --frames "$frames" \
    --count "$cameras"
cams=("$work"/clips/cam*.mp4)
load_checkpoints
printf 'detection:\n  compile: true\n' >"$work/compile.yaml"

detect() {  # NAME LIMIT BACKEND LOAD [detect options...]: one run, its summary in $out/NAME.json
  local name=$1 limit=$2 backend=$3 load=$4; shift 4
  rm -rf "$work/out_$name"
  step "$name" "$limit" reidctl detect "${cams[@]}" --backend "$backend" -c "$work/compile.yaml" --device "$device" \
    $model --model "$(checkpoint "$load")" --no-progress --summary-json "$out/$name.json" "$@"
}
outputs() { echo --mot "$work/out_$1/mot" --jsonl "$work/out_$1/detections.jsonl"; }

if [ "$part" = pytorch ]; then
  for load in $loads worst; do
    step "bench_$load" 200 reidctl bench --backends pytorch -c "$work/compile.yaml" --device "$device" $model \
      --model "$(checkpoint "$load")" --source "${cams[0]}" --iters 300 --warmup 30 --cameras "$cameras" \
      --output "$out/bench_$load.json" --no-progress
    if [ "$load" = worst ]; then
      detect "detect_pytorch_fast_${load}_nooutput" 150 pytorch "$load" --no-output
    else
      detect "detect_pytorch_rt_$load" 150 pytorch "$load" --realtime $(outputs "rt_$load")
    fi
    detect "detect_pytorch_fast_$load" 150 pytorch "$load" $(outputs "fast_$load")
  done
else
  for load in $loads; do
    repo="$work/repo_$load"
    step "triton_start_$load" 300 reidctl setup-triton --repository "$repo" $model --model "$(checkpoint "$load")" \
      --device "$device" --start
    detect "detect_triton_rt_$load" 120 triton "$load" --realtime $(outputs "triton_rt_$load")
    detect "detect_triton_fast_$load" 120 triton "$load" $(outputs "triton_fast_$load")
    reidctl setup-triton --repository "$repo" --stop >>"$out/steps.txt" 2>&1
  done
fi
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    data = json.loads(path.read_text())
    if "cameras" in data and "fps" in data:  # a detect summary
        lat, load = data["latency_ms"], data.get("detection_load") or {}
        rows.append(f"{path.stem:36s} {data['fps'] or 0:8.1f} FPS  dropped {data['dropped']:5d}  P99 {lat['p99'] or 0:7.1f} ms"
                    f"  batch {data['mean_batch'] or 0:5.2f}  kept {load.get('kept_per_frame') or 0:6.0f}"
                    f"  busiest {data['limiting_stage']} {data['busy']}  stop {data['stopped']}")
    elif "backends" in data:  # a bench report
        for backend in data["backends"]:
            for run in backend.get("multi_stream", []):
                rows.append(f"{path.stem:36s} {run['throughput_fps']:8.1f} FPS  {run['mode']} {run['cameras']} cameras"
                            f"  kept {backend.get('detection_load', {}).get('kept_per_frame') or 0:6.0f}")
print("\n".join(rows))
EOF
