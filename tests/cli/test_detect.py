"""`reidctl detect` end to end on real generated files, and every bad input it must reject cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import make_checkpoint, write_config, write_video
from reidctl.cli import app
from reidctl.io.synthetic import synthetic_frame

runner = CliRunner()
REIDCTL = str(Path(sys.executable).with_name("reidctl"))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_video_to_mot_jsonl_and_annotated_video(tmp_path, small_config, video_file):
    mot, jsonl, video = tmp_path / "d.txt", tmp_path / "d.jsonl", tmp_path / "annotated.avi"
    summary = tmp_path / "summary.json"
    result = invoke("detect", video_file, "-c", small_config, "--mot", mot, "--jsonl", jsonl, "--save-video", video, "--summary-json", summary)
    assert result.exit_code == 0, result.output
    lines = mot.read_text().splitlines()
    frames = {int(line.split(",")[0]) for line in lines}
    assert frames == set(range(1, 13))
    fields = lines[0].split(",")
    assert len(fields) == 10 and fields[1] == "-1" and fields[7:] == ["-1", "-1", "-1"]
    assert float(fields[4]) > 0 and float(fields[5]) > 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    assert all(len(row) == 7 for r in records for row in r["detections"])
    assert sum(len(r["detections"]) for r in records) == len(lines)
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    stats = json.loads(summary.read_text())
    assert stats["frames"] == 12 and stats["latency_ms"]["p50"] > 0 and stats["detections"] == len(lines)
    assert "Detection summary" in result.output
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_image_folder_with_annotated_images(tmp_path, small_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, shape in enumerate([(120, 160), (200, 150), (97, 301)]):
        cv2.imwrite(str(folder / f"img{i}.png"), synthetic_frame(i, shape))
    (folder / "notes.txt").write_text("not an image")
    result = invoke("detect", folder, "-c", small_config, "--jsonl", tmp_path / "d.jsonl", "--save-images", tmp_path / "vis")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["img0.png", "img1.png", "img2.png"]
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    # Boxes come back in original-frame pixels: centres lie within (a margin around) the frame.
    dets = np.asarray(records[2]["detections"])
    assert ((dets[:, 0] + dets[:, 2]) / 2).max() <= 301 + 16


def test_single_image_matches_python_api(tmp_path, nano_checkpoint, small_config):
    from reidctl.config import load_config
    from reidctl.engine.detector import create_detector

    image = synthetic_frame(3, (150, 210))
    cv2.imwrite(str(tmp_path / "one.png"), image)
    assert invoke("detect", tmp_path / "one.png", "-c", small_config, "--jsonl", tmp_path / "o.jsonl").exit_code == 0
    cli_rows = np.asarray(json.loads((tmp_path / "o.jsonl").read_text())["detections"], dtype=np.float32)
    with create_detector(load_config(small_config)) as detector:
        api_rows = detector.detect(image)
    assert api_rows.shape == cli_rows.shape and api_rows.shape[1] == 7
    np.testing.assert_allclose(api_rows, cli_rows, atol=1e-3)


def test_default_output_and_untrained_warning(tmp_path, video_file, monkeypatch):
    config = write_config(tmp_path / "c.yaml", None)
    monkeypatch.chdir(tmp_path)
    result = invoke("detect", video_file, "-c", config, "--max-frames", 3)
    assert result.exit_code == 0, result.output
    assert result.output.count("weights are untrained") == 1
    assert (tmp_path / "runs/detect/clip.txt").is_file()


def expect_error(result, message):
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "{tmp}/missing.avi"], "source not found"),
        (["detect", "{tmp}/corrupt.avi"], "cannot open video"),
        (["detect", "{tmp}/corrupt.png"], "cannot decode image"),
        (["detect", "{tmp}/empty_dir"], "no images"),
        (["detect", "{video}", "--model", "{tmp}/missing.pth.tar"], "checkpoint not found"),
        (["detect", "{video}", "--model", "{tmp}/corrupt.png"], "is not a readable PyTorch checkpoint"),
        (["detect", "{video}", "--model-type", "mot17"], "but model_type 'mot17' is YOLOX-x"),
        (["detect", "{video}", "--num-classes", "80"], "80 class(es) were expected"),
        pytest.param(
            ["detect", "{video}", "--device", "cuda"],
            "no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (["detect", "{video}", "--backend", "nope"], "unknown backend 'nope'"),
        (["detect", "{video}", "--mot", "/proc/forbidden/out.txt"], "cannot create output directory"),
        (["detect", "{video}", "--test-size", "100x100"], "multiples of 32"),
        (["detect", "{video}", "--config", "{tmp}/missing.yaml"], "config file not found"),
        (["detect", "{video}", "--config", "{tmp}/unknown_key.yaml"], "unknown config key 'detection.tensorrt.enginepath'"),
        (["detect", "{video}", "--config", "{tmp}/wrong_type.yaml"], "config key 'detection.conf_threshold': expected float"),
        (["detect", "99", "--max-frames", "1"], "cannot open camera 99"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, video_file, small_config, args, message):
    (tmp_path / "corrupt.avi").write_bytes(os.urandom(2048))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "unknown_key.yaml").write_text("detection:\n  tensorrt:\n    enginepath: x.trt\n")
    (tmp_path / "wrong_type.yaml").write_text("detection:\n  conf_threshold: high\n")
    filled = [a.format(tmp=tmp_path, video=video_file) for a in args]
    if "--config" not in filled:
        filled += ["--config", str(small_config)]
    result = runner.invoke(app, filled)
    expect_error(result, message)
    assert not list(tmp_path.glob("**/.*.txt.*"))


def test_help_is_the_manual():
    result = invoke("--help")
    assert result.exit_code == 0 and "detect" in result.output
    detect_help = invoke("detect", "--help").output
    for option in ("--backend", "--mot", "--jsonl", "--save-video", "--config", "--model", "--device"):
        assert option in detect_help


def test_ctrl_c_keeps_complete_outputs(tmp_path, small_config):
    long_video = write_video(tmp_path / "long.avi", frames=600, size=(120, 160))
    mot = tmp_path / "partial.txt"
    process = subprocess.Popen(
        [REIDCTL, "detect", str(long_video), "-c", str(small_config), "--mot", str(mot), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob(".partial.txt.*")):
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr
    lines = mot.read_text().splitlines()
    assert lines and all(len(line.split(",")) == 10 for line in lines)
    frames = sorted({int(line.split(",")[0]) for line in lines})
    assert frames == list(range(1, frames[-1] + 1)) and frames[-1] < 600
    assert not list(tmp_path.glob(".partial.txt.*"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: fp16 + CUDA-graph path")
def test_gpu_cuda_graph_matches_eager(tmp_path, video_file):
    checkpoint = make_checkpoint(tmp_path / "n.pth.tar")
    base = ["detect", video_file, "--model", checkpoint, "--model-type", "nano", "--test-size", "128x160", "--device", "cuda"]
    assert invoke(*base, "--jsonl", tmp_path / "gpu.jsonl").exit_code == 0
    assert invoke(*base[:-1], "cpu", "--jsonl", tmp_path / "cpu.jsonl").exit_code == 0
    gpu = [json.loads(line)["detections"] for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    cpu = [json.loads(line)["detections"] for line in (tmp_path / "cpu.jsonl").read_text().splitlines()]
    assert [len(g) for g in gpu] == pytest.approx([len(c) for c in cpu], rel=0.05)
