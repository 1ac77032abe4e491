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
import typer
from typer.testing import CliRunner

from helpers import make_checkpoint, needs_gpu, take_sigint, write_config, write_video
from reidctl.cli import app
from reidctl.config import DEFAULT_TIMEOUT_S
from reidctl.io.synthetic import synthetic_frame

runner = CliRunner()
REIDCTL = [sys.executable, "-m", "reidctl"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_video_to_mot_jsonl_and_annotated_video(tmp_path, small_config, video_file):
    mot, jsonl, video = tmp_path / "d.txt", tmp_path / "d.jsonl", tmp_path / "annotated.avi"
    summary = tmp_path / "summary.json"
    result = invoke(
        "detect",
        video_file,
        "-c",
        small_config,
        "--mot",
        mot,
        "--jsonl",
        jsonl,
        "--save-video",
        video,
        "--summary-json",
        summary,
    )
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
    # the write stage's time, output by output: the summary and the table say which output costs the most
    by_output = stats["write_ms_by_output"]
    assert set(by_output) == {"mot", "jsonl", "video", "handover"} and all(ms > 0 for ms in by_output.values())
    assert sum(by_output.values()) <= stats["stages_ms_per_frame"]["write"] * 1.01
    costliest = max(by_output, key=by_output.get)
    assert f"({costliest} {by_output[costliest]:.2f}, " in " ".join(result.output.split())
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_image_folder_with_annotated_images(tmp_path, small_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, shape in enumerate([(120, 160), (200, 150), (97, 301)]):
        cv2.imwrite(str(folder / f"img{i}.png"), synthetic_frame(i, shape))
    (folder / "notes.txt").write_text("not an image")
    result = invoke(
        "detect", folder, "-c", small_config, "--jsonl", tmp_path / "d.jsonl", "--save-images", tmp_path / "vis"
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["img0.png", "img1.png", "img2.png"]
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["img0.png.jpg", "img1.png.jpg", "img2.png.jpg"]
    # Boxes come back in original-frame pixels: centres lie within (a margin around) the frame.
    dets = np.asarray(records[2]["detections"])
    assert ((dets[:, 0] + dets[:, 2]) / 2).max() <= 301 + 16


def test_single_image_matches_python_api(tmp_path, nano_checkpoint, small_config):
    from reidctl.config import load_config
    from reidctl.core.detector import create_detector

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
    assert result.stderr.count("weights are untrained") == 1 and "untrained" not in result.stdout
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
        (["detect", "{video}", "--model", "{tmp}/corrupt.png"], "is not a PyTorch checkpoint"),
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
        (
            ["detect", "{video}", "--config", "{tmp}/unknown_key.yaml"],
            "unknown config key 'detection.tensorrt.enginepath'",
        ),
        (
            ["detect", "{video}", "--config", "{tmp}/wrong_type.yaml"],
            "config key 'detection.conf_threshold': expected float",
        ),
        (["detect", "99", "--max-frames", "1"], "cannot open camera 99"),
        (["detect", ""], "empty source"),
        (["detect"], "no source given"),
        (["detect", "--sources", "{tmp}/missing.txt"], "sources file not found"),
        (["detect", "{video}", "--mot", "/proc/out.txt"], "cannot write to /proc: "),
        (["detect", "{video}", "--mot", "{tmp}"], "is a directory: with one source it names a file"),
        (["detect", "{video}", "--jsonl", "{tmp}"], "is a directory: give a file path"),
        (["detect", "{video}", "{video}", "--mot", "{tmp}/corrupt.png"], "with 2 cameras it names a directory"),
        (["detect", "{video}", "--mot", "{tmp}/x.txt", "--jsonl", "{tmp}/x.txt"], "--mot and --jsonl both write"),
        (["detect", "{video}", "--save-video", "{tmp}/x.gif"], "unsupported video extension '.gif'"),
        (["detect", "{video}", "--jsonl", "{video}"], "--jsonl would write over camera clip"),
        (["detect", "{video}", "--summary-json", "{tmp}/../{tmp.name}/s.json", "--jsonl", "{tmp}/s.json"],
         "--jsonl and --summary-json both write"),
        (["detect", "{video}", "--num-classes", "-5"], "'detection.num_classes': expected at least 1 class, got -5"),
        (["detect", "{video}", "--num-classes", "0"], "'detection.num_classes': expected at least 1 class, got 0"),
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


def test_detect_waits_on_a_stream_as_long_as_the_sources_do_by_default():
    detect = typer.main.get_command(app).commands["detect"]
    (timeout,) = [option for option in detect.params if option.name == "timeout"]
    assert timeout.default == DEFAULT_TIMEOUT_S


def test_bad_output_is_refused_before_any_source_is_opened(tmp_path, small_config):
    result = runner.invoke(
        app, ["detect", str(tmp_path / "missing.avi"), "-c", str(small_config), "--mot", str(tmp_path)]
    )
    expect_error(result, "is a directory: with one source it names a file")


def test_empty_sources_file_and_its_comments(tmp_path, small_config):
    (tmp_path / "cams.txt").write_text("# nothing but comments\n\n   # and blanks\n")
    expect_error(invoke("detect", "--sources", tmp_path / "cams.txt", "-c", small_config), "names no source")


def read_outputs(tmp_path: Path, cameras: list[str]) -> dict[str, tuple[list[int], list[int], int]]:
    """Per camera: the MOT frames with detections (0-based), the JSONL frames, the annotated video's frame count."""
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    found = {}
    for name in cameras:
        mot = tmp_path / "mot.txt" if len(cameras) == 1 else tmp_path / "mot" / f"{name}.txt"
        video = tmp_path / "video.avi" if len(cameras) == 1 else tmp_path / "video" / f"{name}.mp4"
        mot_frames = sorted({int(line.split(",")[0]) - 1 for line in mot.read_text().splitlines()})
        jsonl = [r["frame"] for r in records if r["camera"] == name]
        found[name] = (mot_frames, jsonl, int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)))
    return found


@pytest.mark.parametrize(
    ("sig", "cameras", "code", "word"), [(signal.SIGINT, 1, 130, "interrupted"), (signal.SIGTERM, 2, 143, "terminated")]
)
def test_signal_publishes_every_finished_frame_in_every_output(tmp_path, small_config, sig, cameras, code, word):
    names = ["north", "south"][:cameras]
    sources = [f"{name}={write_video(tmp_path / f'{name}.avi', frames=600, size=(120, 160))}" for name in names]
    single = cameras == 1
    outputs = [
        "--mot",
        tmp_path / ("mot.txt" if single else "mot"),
        "--jsonl",
        tmp_path / "all.jsonl",
        "--save-video",
        tmp_path / ("video.avi" if single else "video"),
    ]
    process = subprocess.Popen(
        [*REIDCTL, "detect", *sources, "-c", small_config, *map(str, outputs), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=take_sigint,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob(".all.jsonl.*")):
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and f"{word} after" in stderr
    for name, (mot, jsonl, video_frames) in read_outputs(tmp_path, names).items():
        assert 0 < len(jsonl) < 600 and jsonl == list(range(len(jsonl))), name
        assert mot == jsonl, name  # every frame has detections with this checkpoint: the MOT file holds the same
        assert video_frames == len(jsonl), name
    assert not list(tmp_path.rglob(".*")), "a temporary file survived"


def test_corrupt_image_is_skipped_with_a_warning_or_stops_with_strict(tmp_path, small_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), synthetic_frame(i, (120, 160)))
    (folder / "003.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    def outputs(run: str) -> list:
        return ["--mot", tmp_path / run / "d.txt", "--jsonl", tmp_path / run / "d.jsonl",
                "--save-images", tmp_path / run / "vis"]  # fmt: skip

    result = invoke("detect", folder, "-c", small_config, *outputs("lenient"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"warning: cannot decode image (missing or corrupt): {folder / '003.jpg'}; skipped it" in result.stderr
    expected = ["000", "001", "002", "004", "005", "006", "007"]
    assert published_frames(tmp_path / "lenient") == (expected, expected, expected)

    result = invoke("detect", folder, "-c", small_config, *outputs("strict"), "--strict", "--no-progress")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: stopped after 3 frames: camera images: cannot decode image")
    assert published_frames(tmp_path / "strict") == (["000", "001", "002"],) * 3
    assert not list(tmp_path.rglob(".*"))


def published_frames(directory: Path) -> tuple[list[str], list[str], list[str]]:
    """The image names in the MOT file (by frame number), the JSONL and the annotated images."""
    names = [json.loads(line)["name"].split(".")[0] for line in (directory / "d.jsonl").read_text().splitlines()]
    mot = sorted({f"{int(line.split(',')[0]) - 1:03d}" for line in (directory / "d.txt").read_text().splitlines()})
    return mot, names, sorted(p.name.split(".")[0] for p in (directory / "vis").iterdir())


def test_truncated_video_warns(tmp_path, small_config):
    whole = write_video(tmp_path / "whole.avi", frames=30, size=(120, 160)).read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) * 6 // 10])
    result = invoke(
        "detect", tmp_path / "cut.avi", "-c", small_config, "--jsonl", tmp_path / "d.jsonl", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    read = len((tmp_path / "d.jsonl").read_text().splitlines())
    assert 0 < read < 30
    assert f"warning: video {tmp_path / 'cut.avi'} ended after {read} of its 30 announced frames" in result.stderr


@needs_gpu  # the fp16 and CUDA-graph path
def test_gpu_cuda_graph_matches_eager(tmp_path, video_file):
    checkpoint = make_checkpoint(tmp_path / "n.pth.tar")
    base = [
        "detect",
        video_file,
        "--model",
        checkpoint,
        "--model-type",
        "nano",
        "--test-size",
        "128x160",
        "--device",
        "cuda",
    ]
    assert invoke(*base, "--jsonl", tmp_path / "gpu.jsonl").exit_code == 0
    assert invoke(*base[:-1], "cpu", "--jsonl", tmp_path / "cpu.jsonl").exit_code == 0
    gpu = [json.loads(line)["detections"] for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    cpu = [json.loads(line)["detections"] for line in (tmp_path / "cpu.jsonl").read_text().splitlines()]
    assert [len(g) for g in gpu] == pytest.approx([len(c) for c in cpu], rel=0.05)


def test_live_table_names_the_busiest_stage_and_a_server_that_is_down(tmp_path, small_config, video_file):
    """The live table's caption, from a real run's statistics: the stages per frame, the busiest kind of worker, and
    (several Triton servers) which server is down and how many cameras moved away from it."""
    from reidctl.cli.detect import statistics_table
    from reidctl.config import load_config
    from reidctl.apps.pipeline import OutputRequest, run_detect
    from reidctl.io.sources import camera_specs

    result = run_detect(load_config(small_config), camera_specs([str(video_file)]), OutputRequest(no_output=True),
                        warn=lambda line: None)
    stats = result.summary
    assert stats["limiting_stage"] in stats["busy"] and stats["stages_ms_per_frame"]["decode"] > 0
    servers = [{"url": "a:8101", "live": False, "cameras": 0, "cameras_moved_away": 2},
               {"url": "b:8101", "live": True, "cameras": 4, "cameras_moved_away": 0}]
    caption = str(statistics_table({**stats, "servers": servers}, "detect").caption)
    assert f"busiest: {stats['limiting_stage']}" in caption and "ms per frame: decode " in caption
    # each frame's wait for a step, in its two parts: every frame taken was counted in both
    waits = stats["wait_ms"]
    assert set(waits) == {"behind_its_camera", "for_a_loop"}
    assert all(part["p99"] is not None and part["p99"] >= 0 for part in waits.values())
    assert "wait for a step, P99 ms: behind its camera's frames " in caption
    assert f"; longest step {stats['slowest_steps'][0]['ms']:.1f}\n" in caption  # in process: no server's part
    # the whole host's CPU over the run: this run's own work kept at least part of a core busy
    host = stats["host_cpu"]
    assert host["cores"] == os.cpu_count() and host["cores_busy"] > 0 and host["cores_stolen"] >= 0
    assert f"host: {host['cores_busy']:.1f} of {host['cores']} cores busy" in caption
    # its dropped frames that fell while the host was short of cores
    assert 0 <= host["dropped_short_of_cores"] <= stats["dropped"]
    assert "server a:8101: DOWN, 0 sending, 2 moved away" in caption and "server b:8101: live, 4 sending" in caption
