"""`reidctl detect`'s outputs: written off the detection path, the same frames in every output on any stop (a full
disk included), images that never overwrite each other, and paths refused before any work."""

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import write_config, write_video
from reidctl.cli import app
from reidctl.config import load_config
from reidctl.apps.pipeline import CameraOutputs, OutputPlan, OutputRequest, Outputs, run_detect
from reidctl.errors import ReidctlError
from reidctl.io.sources import Frame, camera_specs
from reidctl.io.synthetic import synthetic_frame, video_fourcc, write_synthetic_video
from reidctl.io.writers import FinishedFrame, ImageDirWriter, JSONLWriter, MOTWriter, VideoWriter


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def expect_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output


def mot_frames(path: Path) -> list[int]:
    return sorted({int(line.split(",")[0]) - 1 for line in path.read_text().splitlines()})


def test_writing_happens_on_the_output_thread_at_hundreds_of_rows_a_frame(tmp_path, nano_checkpoint, monkeypatch):
    """Every anchor is a candidate at this threshold: hundreds of rows a frame, written by the output stage's thread
    (formatted by its child process) while the batch loops (detect-device-*) only hand frames over."""
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, conf_threshold=0.00005))
    writers_seen: dict[str, set[str]] = {}
    for writer in (MOTWriter, JSONLWriter, VideoWriter):
        original = writer._write

        def recording(self, item, original=original, kind=writer.__name__):
            writers_seen.setdefault(kind, set()).add(threading.current_thread().name)
            return original(self, item)

        monkeypatch.setattr(writer, "_write", recording)
    clips = [f"{name}={write_video(tmp_path / f'{name}.avi', frames=8, size=(120, 160))}" for name in ("a", "b")]
    out = tmp_path / "out"
    result = run_detect(config, camera_specs(clips),
                        OutputRequest(mot=out / "mot", jsonl=out / "all.jsonl", video=out / "video"),
                        warn=lambda line: None)
    assert result.stopped is None
    summary = result.summary
    assert summary["frames"] == 16 and summary["detections"] / summary["frames"] > 300
    assert set(writers_seen) == {"MOTWriter", "JSONLWriter", "VideoWriter"}
    threads = set().union(*writers_seen.values())
    assert not any(name.startswith("detect-") for name in threads), threads
    outputs = summary["outputs"]
    assert outputs["frames"] == 16 and outputs["rows"] == summary["detections"]
    assert outputs["write_ms"]["p50"] > 0 and outputs["queue_depth"] == 0 and outputs["producer_wait_seconds"] >= 0
    for name in ("a", "b"):
        assert mot_frames(out / "mot" / f"{name}.txt") == list(range(8))


@pytest.mark.parametrize("video", ["v.mp4", "v.avi"])
def test_video_on_a_full_disk_is_an_error_naming_it_and_the_others_keep_their_frames(tmp_path, small_config,
                                                                                      full_disk, video):
    clip = write_video(tmp_path / "clip.avi", frames=30, size=(240, 320))
    result = invoke("detect", clip, "-c", small_config, "--save-video", full_disk / video, "--mot", tmp_path / "m.txt",
                    "--summary-json", tmp_path / "s.json", "--no-progress")
    expect_one_line_error(result, f"{full_disk / video}")
    assert f"wrote{full_disk / video}" not in "".join(result.stdout.split())  # Rich wraps long lines
    assert list(full_disk.iterdir()) == []  # neither a broken video nor a temporary file
    summary = json.loads((tmp_path / "s.json").read_text())
    assert str(full_disk / video) in summary["stopped"]
    frames = mot_frames(tmp_path / "m.txt")
    assert frames == list(range(len(frames))) and 0 < len(frames) < 30
    assert summary["outputs"]["frames"] == len(frames)


def test_full_disk_stops_the_run_and_every_output_holds_the_same_frames(tmp_path, small_config, full_disk):
    clip = write_video(tmp_path / "clip.avi", frames=30, size=(240, 320))
    mot, jsonl, summary_path = full_disk / "m.txt", tmp_path / "ok.jsonl", tmp_path / "ok.json"
    result = invoke("detect", clip, "-c", small_config, "--mot", mot, "--jsonl", jsonl, "--summary-json",
                    summary_path, "--no-progress")
    expect_one_line_error(result, f"cannot write {mot}: No space left on device")
    assert f"wrote{mot}" in "".join(result.stdout.split())  # Rich wraps long lines
    records = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines()]
    assert 0 < len(records) < 30 and records == list(range(len(records)))
    assert mot_frames(mot) == records
    summary = json.loads(summary_path.read_text())
    assert summary["stopped"] == f"cannot write {mot}: No space left on device"
    assert summary["outputs"]["frames"] == len(records)
    assert [p.name for p in full_disk.iterdir()] == ["m.txt"]


def test_images_of_one_folder_never_overwrite_each_other(tmp_path, small_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["p1.jpg", "p1.png", "p2.jpg", "p2.png"]):
        cv2.imwrite(str(folder / name), synthetic_frame(i, (120, 160)))
    result = invoke("detect", folder, "-c", small_config, "--save-images", tmp_path / "vis", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["p1.jpg.jpg", "p1.png.jpg", "p2.jpg.jpg",
                                                                    "p2.png.jpg"]


def test_every_video_writer_refuses_an_extension_without_a_codec_and_writes_nothing(tmp_path):
    for opens in (lambda path: VideoWriter(path, 30.0), write_synthetic_video):
        with pytest.raises(ReidctlError, match=r"^unsupported video extension '\.gif' \(use \.avi, \.mp4, \.mkv\)$"):
            opens(tmp_path / "v.gif")
    assert list(tmp_path.iterdir()) == []
    clip = write_synthetic_video(tmp_path / "clip.MP4", frames=2, size=(64, 64))  # an extension's case is no matter
    assert video_fourcc(clip) == "mp4v" and cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT) == 2


def test_discarded_images_leave_nothing(tmp_path):
    none = np.zeros((0, 7), np.float32)
    writer = ImageDirWriter(tmp_path / "vis")
    for i in range(3):
        writer.write(FinishedFrame("cam", Frame(i, synthetic_frame(i, (60, 80)), f"cam#{i}"), none))
    writer.close(publish=False)
    assert not (tmp_path / "vis").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("not ours")
    writer = ImageDirWriter(kept)
    writer.write(FinishedFrame("cam", Frame(0, synthetic_frame(0, (60, 80)), "cam#0"), none))
    writer.close(publish=False)
    assert [p.name for p in kept.iterdir()] == ["mine.txt"]


def test_discarded_images_leave_no_folder_they_created(tmp_path):
    writer = ImageDirWriter(tmp_path / "run" / "vis")
    writer.write(FinishedFrame("cam", Frame(0, synthetic_frame(0, (60, 80)), "cam#0"), np.zeros((0, 7), np.float32)))
    writer.close(publish=False)
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_all_open_leave_no_image_folder(tmp_path):
    """An output that cannot be opened discards those opened before it: the image folders of the cameras before it
    go, and the folder that holds them."""
    images = tmp_path / "vis"
    plan = OutputPlan({"a": CameraOutputs(images=images / "a"), "b": CameraOutputs(images=images / "b"),
                       "c": CameraOutputs(video=tmp_path / "c.xyz")})
    cameras = [SimpleNamespace(name=name, fps=None) for name in plan.cameras]  # what the outputs read of a camera
    with pytest.raises(ReidctlError, match="unsupported video extension '.xyz'"):
        Outputs(plan, cameras)
    assert list(tmp_path.iterdir()) == []


def test_no_output_writes_only_the_summary(tmp_path, small_config, video_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("detect", video_file, "-c", small_config, "--no-output", "--summary-json", "s.json",
                    "--max-frames", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "s.json"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 3 and summary["outputs"]["frames"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-output", "--mot", "{tmp}/m.txt", "--save-images", "{tmp}/vis"],
         "--no-output writes no detection output: drop --mot, --save-images or --no-output"),
        (["{video}", "--mot", "{tmp}/x.txt"], "--mot {tmp}/x.txt: with 2 cameras it names a directory"),
        (["{video}", "--save-video", "{tmp}/v.mp4"], "--save-video {tmp}/v.mp4: with 2 cameras it names a directory"),
        (["--save-images", "{tmp}/vis.jpg"], "--save-images {tmp}/vis.jpg: it names a directory"),
        (["--mot", "{tmp}/o/p2.jpg", "--save-images", "{tmp}/o"], "--mot writes p2.jpg inside {tmp}/o, where"),
    ],
)
def test_conflicting_outputs_are_refused_in_one_line(tmp_path, small_config, video_file, args, message):
    filled = [a.format(tmp=tmp_path, video=video_file) for a in args]
    expect_one_line_error(invoke("detect", video_file, *filled, "-c", small_config), message.format(tmp=tmp_path))
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "o").exists()


def test_a_camera_scene_clip_keeps_its_background_still_and_takes_a_fraction_of_the_noise_scenes_bits(tmp_path):
    """The benchmark clips of a fixed camera: only the shapes move, so the encoder sends little after the first frame;
    the noise scene changes every pixel every frame."""
    size = (120, 160)
    first, later = (synthetic_frame(i, size, "camera") for i in (0, 5))
    moved = np.any(first != later, axis=2)
    assert 0 < moved.mean() < 0.2  # the shapes moved; the background did not
    assert np.any(synthetic_frame(0, size) != synthetic_frame(5, size), axis=2).mean() > 0.9
    noise, camera = (write_synthetic_video(tmp_path / f"{scene}.mp4", 30, size, scene=scene).stat().st_size
                     for scene in ("noise", "camera"))
    assert camera < noise / 3
    with pytest.raises(ReidctlError, match=r"^unknown scene 'street' \(use noise, camera\)$"):
        synthetic_frame(0, size, "street")
