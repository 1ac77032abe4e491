"""scripts/make_load_checkpoints.py: three checkpoints that put increasing detection loads on NMS, the crowd with
people among its candidates for a tracker to follow."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT, write_config

from reidctl.config import load_config
from reidctl.core.detector import create_detector
from reidctl.io.synthetic import synthetic_frame

SIZE = (128, 160)  # 420 anchors


def test_idle_crowd_and_worst_loads(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_load_checkpoints.py"), "--output-dir", str(tmp_path),
         "--model-type", "nano", "--size", *map(str, SIZE), "--frames", "2", "--crowd", "100", "--people", "5"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line.split(":")[0].strip() for line in run.stdout.splitlines()] == ["idle", "crowd", "worst"]
    load, people = {}, {}
    for name in ("idle", "crowd", "worst"):
        checkpoint = tmp_path / f"nano_{name}.pth.tar"
        config = write_config(tmp_path / f"{name}.yaml", checkpoint, test_size=list(SIZE), conf_threshold=0.01)
        with create_detector(load_config(config)) as detector:
            rows = detector.detect_batch([synthetic_frame(i, SIZE) for i in range(2)])  # its calibration frames
            load[name] = detector.load
            people[name] = sum(int((frame[:, 4] * frame[:, 5] >= 0.6).sum()) for frame in rows) / 2
    assert load["idle"].candidates_per_frame < load["crowd"].candidates_per_frame < load["worst"].candidates_per_frame
    assert 50 <= load["crowd"].candidates_per_frame <= 200
    assert load["worst"].candidates_per_frame == 420  # every anchor
    assert load["worst"].kept_per_frame >= 0.95 * 420  # tiny boxes: NMS keeps nearly all
    # 5 of the 20 coarsest anchors a frame score as people (ByteTrack starts tracks at 0.6); NMS keeps some
    assert people["idle"] == people["worst"] == 0 and 1 <= people["crowd"] <= 5
