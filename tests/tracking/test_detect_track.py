"""`reidctl detect --track`: ByteTrack per camera on the outputs' thread, giving what `reidctl track` gives on the same
run's detections, with every output (MOT17 tracks, JSON lines, video, crops) and frames dropped by a live camera."""

import csv
import json
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
from typer.testing import CliRunner

from helpers import take_sigint, write_config, write_video
from reidctl.cli import app
from reidctl.config import load_config
from reidctl.apps.pipeline import OutputRequest, run_detect
from reidctl.io.sources import camera_specs
from reidctl.tracking import ByteTracker

REIDCTL = [sys.executable, "-m", "reidctl"]


def reidctl(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([*REIDCTL, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


def read_mot(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def tracks_by_frame(path, camera: str) -> dict[int, np.ndarray]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["frame"]: np.array(r["tracks"], dtype=np.float64).reshape(-1, 6)
            for r in records if r["camera"] == camera}


def crop_rows(index) -> list[tuple[str, int, int]]:
    """(camera, track id, frame) of every crop in a crops index (Parquet or CSV)."""
    if index.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(index).to_pydict()
        return list(zip(table["camera"], table["track_id"], table["frame"]))
    with index.open() as handle:
        return [(row["camera"], int(row["track_id"]), int(row["frame"])) for row in csv.DictReader(handle)]


def assert_same_tracks(got, want, box_px: float, exact: int) -> None:
    """The same rows in the same order: the first ``exact`` columns (frame and id, or id) exactly, the box and score
    after them within ``box_px``."""
    assert got.shape == want.shape
    assert (got[:, :exact] == want[:, :exact]).all()
    np.testing.assert_allclose(got[:, exact:exact + 5], want[:, exact:exact + 5], rtol=0, atol=box_px)


def test_detect_track_gives_what_track_gives_on_its_detections_in_every_output(tmp_path, small_config):
    clips = [f"{name}={write_video(tmp_path / f'{name}.avi', frames=12, size=(120, 160), fps=10.0)}"
             for name in ("door", "hall")]
    out = tmp_path / "out"
    reidctl("detect", *clips, "-c", small_config, "--track", "--mot", out / "mot", "--jsonl", out / "dets.jsonl",
            "--save-video", out / "video", "--crops", out / "crops", "--summary-json", out / "summary.json",
            "--no-progress")
    # the same detections through `reidctl track`, at the cameras' frame rate (JSON lines do not carry it)
    reidctl("track", out / "dets.jsonl", "--fps", 10, "--mot", out / "reference", "--jsonl", out / "reference.jsonl",
            "--summary-json", out / "reference.json")
    summary = json.loads((out / "summary.json").read_text())
    reference = {c["name"]: c for c in json.loads((out / "reference.json").read_text())["cameras"]}
    for camera in summary["cameras"]:
        name = camera["name"]
        mot = read_mot(out / "mot" / f"{name}.txt")
        assert mot.shape[1] == 10 and (mot[:, 7:] == -1).all() and set(mot[:, 0]) == set(range(1, 13))
        assert_same_tracks(mot, read_mot(out / "reference" / f"{name}.txt"), box_px=0.011, exact=2)  # 2 decimals
        got, want = tracks_by_frame(out / "dets.jsonl", name), tracks_by_frame(out / "reference.jsonl", name)
        assert sorted(got) == sorted(want) == list(range(12))
        for frame in got:
            assert_same_tracks(got[frame], want[frame], box_px=1e-3, exact=1)
        seqinfo = (out / "mot" / name / "seqinfo.ini").read_text()
        assert "frameRate=10\n" in seqinfo and "seqLength=12\n" in seqinfo and "imWidth=160\n" in seqinfo
        want_counts = {"active": reference[name]["active"], "lost": reference[name]["lost"],
                       "total": reference[name]["tracks"]}
        assert camera["tracks"] == want_counts and want_counts["active"] > 0
        video = cv2.VideoCapture(str(out / "video" / f"{name}.mp4"))
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert summary["tracks"] == {key: sum(c["tracks"][key] for c in summary["cameras"])
                                 for key in ("active", "lost", "total")}
    records = [json.loads(line) for line in (out / "dets.jsonl").read_text().splitlines()]
    assert all(len(row) == 7 for r in records for row in r["detections"])  # the detections stay
    cropped = {(name, track_id) for name, track_id, _ in crop_rows(next((out / "crops").glob("index.*")))}
    tracked = {(n, int(i)) for n in ("door", "hall") for i in read_mot(out / "mot" / f"{n}.txt")[:, 1]}
    assert cropped and cropped <= tracked
    assert all((out / "crops" / name / f"{track_id:06d}" / "best.jpg").is_file() for name, track_id in cropped)
    assert not list(tmp_path.rglob(".*")), "a temporary file survived"


def test_the_tracker_runs_in_the_output_stages_process_and_a_high_conf_threshold_warns(tmp_path, nano_checkpoint,
                                                                                        monkeypatch):
    """Off the detection path: the output stage's formatting process tracks, so no thread of this one does."""
    threads = set()
    update = ByteTracker.update

    def recording(self, detections, frame_index):
        threads.add(threading.current_thread().name)
        return update(self, detections, frame_index)

    monkeypatch.setattr(ByteTracker, "update", recording)
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, conf_threshold=0.3))
    clips = [f"{name}={write_video(tmp_path / f'{name}.avi', frames=6, size=(120, 160))}" for name in ("a", "b")]
    warnings = []
    result = run_detect(config, camera_specs(clips), OutputRequest(mot=tmp_path / "mot", track=True),
                        warn=warnings.append)
    assert result.stopped is None and threads == set()
    assert [w for w in warnings if "conf_threshold 0.3 is above tracking.low_thresh 0.1" in w], warnings
    assert set(c["name"] for c in result.summary["cameras"]) == {"a", "b"} and result.summary["tracks"]["total"] > 0


def test_crops_without_track_is_a_one_line_error(tmp_path, small_config, video_file):
    result = CliRunner().invoke(app, ["detect", str(video_file), "-c", str(small_config), "--crops",
                                      str(tmp_path / "crops")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == "error: --crops needs --track: crops are cut from the tracks"
    assert not (tmp_path / "crops").exists() and not (tmp_path / "runs").exists()


def test_a_camera_that_drops_frames_tracks_across_the_gaps(tmp_path, small_config):
    clip = write_video(tmp_path / "fast.avi", frames=120, size=(120, 160), fps=400.0)  # faster than the CPU detects
    out = tmp_path / "out"
    reidctl("detect", f"fast={clip}", "-c", small_config, "--realtime", "--track", "--mot", out / "t.txt", "--jsonl",
            out / "dets.jsonl", "--summary-json", out / "summary.json", "--no-progress")
    camera = json.loads((out / "summary.json").read_text())["cameras"][0]
    frames = sorted(tracks_by_frame(out / "dets.jsonl", "fast"))
    assert camera["dropped"] > 0 and len(frames) == camera["frames"] and frames[-1] >= len(frames)
    mot = read_mot(out / "t.txt")
    assert set(mot[:, 0].astype(int) - 1) <= set(frames)  # the camera's own frame numbers, gaps kept
    assert f"seqLength={frames[-1] + 1}\n" in (out / "seqinfo.ini").read_text()
    reidctl("track", out / "dets.jsonl", "--fps", 400, "--mot", out / "reference.txt")
    assert_same_tracks(mot, read_mot(out / "reference.txt"), box_px=0.011, exact=2)


def test_a_stopped_run_keeps_every_finished_frame_in_every_track_output(tmp_path, small_config):
    clip = write_video(tmp_path / "long.avi", frames=600, size=(120, 160))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*REIDCTL, "detect", f"cam={clip}", "-c", str(small_config), "--track", "--mot", str(out / "t.txt"),
         "--jsonl", str(out / "dets.jsonl"), "--crops", str(out / "crops"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=take_sigint,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 0 for p in out.glob(".dets.jsonl.*")):
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    frames = sorted(tracks_by_frame(out / "dets.jsonl", "cam"))
    assert 0 < len(frames) < 600 and frames == list(range(len(frames)))
    assert sorted(set(read_mot(out / "t.txt")[:, 0].astype(int) - 1)) == frames  # every frame has tracks here
    assert f"seqLength={len(frames)}\n" in (out / "seqinfo.ini").read_text()
    cropped = {frame for *_, frame in crop_rows(next((out / "crops").glob("index.*")))}
    assert 0 in cropped and cropped <= set(frames)
    assert not list(tmp_path.rglob(".*")), "a temporary file survived"
