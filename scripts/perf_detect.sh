#!/usr/bin/env bash
# End-to-end `reidctl detect` latency on the GPU: YOLOX-X (mot17 layout), fp16, 640x640 and 1920x1080 clips.
# Usage: scripts/perf_detect.sh OUT_DIR [FRAMES]
set -euo pipefail
out=${1:?output directory}; frames=${2:-300}
mkdir -p "$out"
python3 scripts/make_clip.py /tmp/clip_640.avi --frames "$frames" --size 640x640
python3 scripts/make_clip.py /tmp/clip_1080.avi --frames "$frames" --size 1080x1920
for clip in 640 1080; do
  python3 -m reidctl detect /tmp/clip_$clip.avi --model-type mot17 --device cuda --fp16 --no-progress \
    --mot /tmp/clip_$clip.txt --summary-json "$out/detect_$clip.json"
done
