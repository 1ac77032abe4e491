"""Several devices in one process: device lists, and batches spread over one runner per device (cpu,cpu here)."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import assert_same_detections, canonical_rows, needs_gpu, write_video
from reidctl.cli import app
from reidctl.config import load_config, override
from reidctl.core.detector import Detector, create_detector
from reidctl.core.device import resolve_devices
from reidctl.errors import ReidctlError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_device_lists():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert resolve_devices(" cpu , cpu ,cpu") == [torch.device("cpu")] * 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu,cuda:0", "no CUDA GPU" if not torch.cuda.is_available() else "mixes the CPU and GPUs"),
        ("cpu,", "bad device list"),
        ("cpu,auto", "bad device list"),
        ("cpu,tpu", "unknown device 'tpu'"),
        ("cuda:99,98", "no CUDA GPU" if not torch.cuda.is_available() else "'cuda:99' does not exist"),
    ],
)
def test_bad_device_lists_fail_in_one_line(text, message):
    with pytest.raises(ReidctlError, match=message) as error:
        resolve_devices(text)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_all_needs_a_gpu():
    with pytest.raises(ReidctlError, match="'all' was requested but no CUDA GPU"):
        resolve_devices("all")


@needs_gpu
def test_gpu_lists():
    count = torch.cuda.device_count()
    assert resolve_devices("all") == [torch.device("cuda", i) for i in range(count)]
    with pytest.raises(ReidctlError, match="names a GPU twice"):
        resolve_devices("cuda:0,0")
    with pytest.raises(ReidctlError, match="mixes the CPU and GPUs"):
        resolve_devices("cuda:0,cpu")


def _detect(tmp_path, config, clips, device, name):
    out = tmp_path / name
    result = invoke("detect", *[f"{cam}={clip}" for cam, clip in clips.items()], "-c", config, "--device", device,
                    "--jsonl", out / "d.jsonl", "--mot", out / "mot", "--summary-json", out / "s.json", "--no-progress")
    assert result.exit_code == 0, result.output
    records = {(r["camera"], r["frame"]): r["detections"]
               for r in map(json.loads, (out / "d.jsonl").read_text().splitlines())}
    # The frame numbers in file order (the boxes' last digits may differ between batch sizes).
    mot = {cam: [line.split(",")[0] for line in (out / "mot" / f"{cam}.txt").read_text().splitlines()]
           for cam in clips}
    return records, mot, json.loads((out / "s.json").read_text())


def test_detect_on_two_devices_finds_what_one_finds(tmp_path, small_config):
    clips = {"a": write_video(tmp_path / "a.avi", frames=14, size=(120, 160)),
             "b": write_video(tmp_path / "b.avi", frames=10, size=(240, 320))}
    one, one_mot, one_summary = _detect(tmp_path, small_config, clips, "cpu", "one")
    two, two_mot, summary = _detect(tmp_path, small_config, clips, "cpu,cpu", "two")
    assert "per_device" not in one_summary and one_summary["device"] == "cpu"
    assert len(two) == 24 and two.keys() == one.keys()
    for key, rows in one.items():
        # float32 sums differ with the batch size
        np.testing.assert_allclose(canonical_rows(two[key]), canonical_rows(rows), rtol=1e-5, atol=1e-4)
    assert two_mot == one_mot  # each camera's frames are written in order, whichever device served them
    assert summary["device"] == "cpu,cpu" and summary["devices"] == ["cpu", "cpu"]
    shares = summary["per_device"]
    assert [share["device"] for share in shares] == ["cpu", "cpu"]
    assert all(share["batches"] > 0 for share in shares), shares  # one batch loop per device, both served
    assert sum(share["frames"] for share in shares) == summary["frames"] == 24


def test_batches_smaller_than_the_cameras_lose_no_frame(tmp_path, small_config):
    """--max-batch below the camera count: the cameras left out of a step keep their frame for the next one."""
    clips = [write_video(tmp_path / f"{cam}.avi", frames=6, size=(120, 160)) for cam in "abc"]
    summary = tmp_path / "s.json"
    result = invoke("detect", *clips, "-c", small_config, "--max-batch", "1", "--summary-json", summary,
                    "--jsonl", tmp_path / "d.jsonl", "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert [c["frames"] for c in data["cameras"]] == [6, 6, 6] and data["batch_sizes"] == {"1": 18}


def test_bench_pipeline_on_two_devices_records_each_devices_share(tmp_path, small_config, video_file):
    output = tmp_path / "bench.json"
    result = invoke("bench", "--backends", "pytorch", "--iters", 12, "--warmup", 2, "--cameras", 4,
                    "--device", "cpu,cpu", "--source", video_file, "-c", small_config, "-o", output,
                    "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text())
    assert data["environment"]["devices"] == ["cpu", "cpu"]
    (backend,) = data["backends"]
    assert backend["runner"]["devices"] == ["cpu", "cpu"] and "cpu,cpu" in result.output  # Runs as
    runs = {run["mode"]: run for run in backend["multi_stream"]}
    shares = runs["pipeline"]["per_device"]
    assert [share["device"] for share in shares] == ["cpu", "cpu"]
    assert sum(share["frames"] for share in shares) == 12  # the measured requests, the warm-up left out
    assert sum(share["batches"] for share in shares) == sum(runs["pipeline"]["batch_sizes"].values())
    assert all(share["batches"] > 0 for share in shares), shares  # two batch loops: both devices ran batches
    assert "per_device" not in runs["sequential"]  # one caller at a time: no spreading to report


def test_a_cpu_runs_one_batch_at_a_time(small_config):
    """batches_in_flight is for GPUs: a CPU runner already uses every core, so a CPU device gets one Detector."""
    config = override(load_config(small_config), batches_in_flight=3)
    with create_detector(config) as detector:
        assert isinstance(detector, Detector) and detector.stream is None
        assert detector.detect_batch([]) == [] and detector.detect_canvases([], []) == []  # nothing in, nothing run
    with create_detector(override(config, device="cpu,cpu")) as pool:
        assert pool.concurrency == 2 and pool.describe()["batches_in_flight"] == 1


@needs_gpu  # CUDA streams exist only there
def test_two_batches_in_flight_on_one_gpu_find_what_one_finds(small_config, frames):
    """Two runners on one GPU, each on its own stream, called from two threads at once: the same detections as one
    runner, every batch counted against the one device."""
    config = override(load_config(small_config), device="cuda:0")
    starts = range(0, len(frames) - 3, 4)
    with create_detector(override(config, batches_in_flight=1)) as one:
        expected = [one.detect_batch(frames[i:i + 4]) for i in starts]
    with create_detector(override(config, batches_in_flight=2)) as pool:
        assert pool.concurrency == 2 and pool.describe()["batches_in_flight"] == 2
        assert pool.devices() == ["cuda:0"] and pool.device_shares() is None  # one device: nothing to spread
        assert pool.detect_batch([]) == []  # no empty CUDA graph is captured
        streams = [member.stream for member in pool.members]
        assert None not in streams and streams[0] != streams[1]
        with ThreadPoolExecutor(2) as threads:
            found = list(threads.map(lambda i: pool.detect_batch(frames[i:i + 4]), starts))
    for want, got in zip(expected, found):
        for rows, same in zip(want, got):
            assert_same_detections(same, rows, threshold=config.detection.conf_threshold)


def test_capacity_sentence_names_the_gpu_count():
    from reidctl.apps.recommend import who_serves

    assert who_serves({"device": "cuda:0", "devices": ["cuda:0"]}) == "This machine serves"
    assert who_serves({"device": "cpu"}) == "This machine serves"  # reports from before device lists
    assert who_serves({"devices": ["cuda:0", "cuda:1"]}) == "2 GPUs serve"


def test_capacity_sentence_parts_name_the_device_count():
    from reidctl.apps.bench_report import serving_devices

    assert serving_devices({"device": "cuda:0", "devices": ["cuda:0"]}) == ("This machine", "serves")
    assert serving_devices({"device": "cpu"}) == ("This machine", "serves")  # reports from before device lists
    assert serving_devices({"devices": ["cuda:0", "cuda:1"]}) == ("2 GPUs", "serve")
    assert serving_devices({"devices": ["cpu", "cpu"]}) == ("2 devices", "serve")
