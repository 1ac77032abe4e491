"""Many cameras in one run: batching across cameras, real HTTP streams from ffmpeg that die, stall and come back."""

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import SMALL_TEST_SIZE, canonical_rows, free_ports, read_frames, start_test_server, write_video
from reidctl.cli import app
from reidctl.apps.cameras import Camera, Hub
from reidctl.config import load_config
from reidctl.core.detector import create_detector
from reidctl.apps.pipeline import DetectOptions, OutputRequest, run_detect
from reidctl.errors import ReidctlError
from reidctl.io.sources import CameraSpec, MemorySource, camera_specs, read_source_list
from reidctl.io.synthetic import synthetic_frame

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def mot_frames(path: Path) -> list[int]:
    return sorted({int(line.split(",")[0]) for line in path.read_text().splitlines()})


class StreamServer:
    """A real MPEG-TS stream over HTTP from ffmpeg (``-listen 1``: it serves one client, then exits)."""

    def __init__(self, port: int, fps: int = 20):
        self.url = f"http://127.0.0.1:{port}/live.ts"
        command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
                   "-i", f"testsrc=size=160x120:rate={fps}", "-c:v", "mpeg4", "-f", "mpegts", "-listen", "1", self.url]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._listening():
            assert time.monotonic() < deadline, "ffmpeg did not start listening"
            if self.process.poll() is not None:  # the port is not free yet (a killed server's socket lingers): again
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.05)

    def _listening(self) -> bool:
        # /proc/net/tcp lists the listening socket (state 0A) without connecting to it: -listen 1 serves one client.
        port = f":{int(self.url.split(':')[2].split('/')[0]):04X} "
        return any(port in line and " 0A " in line for line in Path("/proc/net/tcp").read_text().splitlines())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture()
def stream_port():
    return free_ports(1)[0]


def test_three_cameras_batched_into_per_camera_outputs(tmp_path, small_config):
    clips = tmp_path / "clips"
    write_video(clips / "a.avi", frames=12, size=(120, 160))
    write_video(clips / "b.avi", frames=20, size=(240, 320))
    (clips / "folder").mkdir()
    for i in range(5):
        cv2.imwrite(str(clips / "folder" / f"{i:03d}.png"), synthetic_frame(i, (100, 130)))
    sources = tmp_path / "cameras.txt"
    sources.write_text(f"# the test rig\nentrance={clips / 'a.avi'}\n\n{clips / 'b.avi'}  # no name: named b\n"
                       f"lobby={clips / 'folder'}\n")
    out = tmp_path / "out"
    result = invoke("detect", "--sources", sources, "-c", small_config, "--mot", out / "mot",
                    "--jsonl", out / "all.jsonl", "--save-video", out / "video", "--summary-json", out / "summary.json",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    expected = {"entrance": 12, "b": 20, "lobby": 5}
    records = [json.loads(line) for line in (out / "all.jsonl").read_text().splitlines()]
    for name, frames in expected.items():
        assert mot_frames(out / "mot" / f"{name}.txt") == list(range(1, frames + 1))
        assert sorted(r["frame"] for r in records if r["camera"] == name) == list(range(frames))
        assert int(cv2.VideoCapture(str(out / "video" / f"{name}.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    summary = json.loads((out / "summary.json").read_text())
    cameras = {c["name"]: c for c in summary["cameras"]}
    assert {name: c["frames"] for name, c in cameras.items()} == expected
    assert all(c["dropped"] == 0 and c["state"] == "ended" and c["latency_ms"]["p99"] > 0 for c in cameras.values())
    assert summary["frames"] == 37 and summary["detections"] == sum(len(r["detections"]) for r in records)
    # The cameras' frames went through the model together: batches of up to 3 frames, 20 steps for 37 frames.
    assert summary["mean_batch"] > 1.5 and set(summary["batch_sizes"]) <= {"1", "2", "3"}
    assert summary["mean_step_frames"] == summary["mean_batch"]  # in process each step is one batch of the model
    assert "3" in summary["batch_sizes"]
    assert not list(out.rglob(".*"))


def test_frames_letterboxed_by_the_readers_give_detect_batch_detections(tmp_path, small_config):
    """Each reader letterboxes its own frames (shrunk, enlarged, or already the input size); the run finds exactly
    what Detector.detect_batch finds on the same decoded frames. Both sides run batches of one frame (a CPU's
    convolution kernels may sum in another order for another batch size), and both sides' rows are rounded as the
    JSON lines round them before they are put in order (else two rows near a tie sort differently)."""
    clips = {"wide": write_video(tmp_path / "wide.avi", frames=10, size=(240, 320)),
             "narrow": write_video(tmp_path / "narrow.avi", frames=8, size=(100, 90)),
             "exact": write_video(tmp_path / "exact.avi", frames=6, size=SMALL_TEST_SIZE)}
    config = load_config(small_config)
    jsonl = tmp_path / "d.jsonl"
    result = run_detect(config, camera_specs([f"{name}={clip}" for name, clip in clips.items()]),
                        OutputRequest(jsonl=jsonl), DetectOptions(max_batch=1), warn=lambda line: None)
    assert result.stopped is None and result.summary["batch_sizes"] == {"1": 24}
    found = {(r["camera"], r["frame"]): r["detections"] for r in map(json.loads, jsonl.read_text().splitlines())}
    assert len(found) == 24
    with create_detector(config) as detector:
        for name, clip in clips.items():
            for index, frame in enumerate(read_frames(clip)):
                expected = detector.detect_batch([frame])[0]
                assert len(expected) > 0
                # rounded as the JSON lines round them before the rows are put in order
                expected = [[round(float(value), 5) for value in row] for row in expected]
                found_rows, expected_rows = canonical_rows(found[name, index]), canonical_rows(expected)
                np.testing.assert_allclose(found_rows, expected_rows, rtol=1e-5, atol=1e-4)


def test_realtime_drops_what_the_detector_cannot_take(tmp_path, small_config):
    clip = write_video(tmp_path / "fast.avi", frames=120, size=(120, 160), fps=400.0)  # faster than the CPU detects
    summary = tmp_path / "s.json"
    result = invoke("detect", clip, "-c", small_config, "--realtime", "--mot", tmp_path / "d.txt",
                    "--summary-json", summary, "--no-progress")
    assert result.exit_code == 0, result.output
    written = json.loads(summary.read_text())
    camera = written["cameras"][0]
    by_second = written["by_second"].values()
    assert sum(second["dropped"] for second in by_second) == camera["dropped"] == written["dropped"]
    assert sum(second["frames"] for second in by_second) == sum(int(size) * count for size, count
                                                                in written["batch_sizes"].items())
    slowest = written["slowest_steps"]
    times = [step["ms"] for step in slowest]
    assert 0 < len(slowest) <= 5 and times == sorted(times, reverse=True)
    assert slowest[0]["ms"] == pytest.approx(max(second["step_ms_max"] for second in by_second), abs=0.01)
    assert all(step["server_ms"] is None for step in slowest)  # in process: no server
    frames = mot_frames(tmp_path / "d.txt")
    assert camera["dropped"] > 0 and camera["frames"] + camera["dropped"] <= 120
    assert len(frames) == camera["frames"] and frames[-1] > len(frames)  # frame numbers keep their place in the file


def held_frames(buffer: int, frames: int, cameras: int = 1) -> Hub:
    """Real-time cameras that played ``frames`` frames each with nobody taking them, each holding what its buffer
    kept."""
    hub = Hub()
    image = np.zeros((48, 64, 3), np.uint8)
    for index in range(cameras):
        camera = Camera(CameraSpec(f"cam{index}", "memory"), MemorySource([image], frames, fps=1000.0), hub,
                        lambda: None, lambda line: None, realtime=True, buffer=buffer)
        camera.start()
        camera.join(5.0)
        assert camera.state == "ended"
    return hub


def taken_frames(hub: Hub, max_batch: int) -> list[list[tuple[str, int]]]:
    """Each batch's (camera, frame index), taking and releasing batches until none is left."""
    batches = []
    while batch := hub.take_batch(max_batch, timeout_s=0):
        batches.append([(item.camera.name, item.frame.index) for item in batch])
        hub.release(batch)
    return batches


@pytest.mark.parametrize("buffer", [1, 2, 3])
def test_a_realtime_camera_keeps_its_newest_frames_up_to_its_buffer_and_a_batch_takes_them_in_order(buffer):
    """A camera whose frames nobody takes keeps the newest ``buffer`` of them (detection.camera_buffer) and counts the
    rest dropped; the next batch takes them all, oldest first: a step that ran late loses none of the frames the
    buffer held, and the camera catches up in one step. With room for one frame a step, one a step, in order."""
    hub = held_frames(buffer, 6)
    kept = [("cam0", index) for index in range(6 - buffer, 6)]
    assert taken_frames(hub, 4) == [kept] and hub.cameras[0].dropped == 6 - buffer and hub.done()
    assert taken_frames(held_frames(buffer, 6), 1) == [[frame] for frame in kept]


def test_a_batch_takes_every_ready_cameras_oldest_frame_before_any_cameras_later_ones():
    """Three cameras two frames behind, room for four: each camera's oldest first, then the first camera's next;
    the camera that got one frame gives its other in the next batch (a camera with frames in flight gives none)."""
    hub = held_frames(2, 5, cameras=3)
    assert taken_frames(hub, 4) == [[("cam0", 3), ("cam1", 3), ("cam2", 3), ("cam0", 4)],
                                    [("cam1", 4), ("cam2", 4)]]


def test_a_frames_wait_is_split_into_behind_its_cameras_frames_and_for_a_batch_loop():
    """detect's wait_ms: a frame ready while its camera's earlier frame is still in a step waits behind it until
    the release; a frame whose camera is free waits for a batch loop alone."""
    hub = held_frames(2, 2)  # one camera holding frames 0 and 1
    time.sleep(0.2)  # no loop takes frame 0 for a while: it waits for a loop
    first = hub.take_batch(1, timeout_s=0)
    time.sleep(0.3)  # frame 1 waits behind frame 0's step
    hub.release(first)
    second = hub.take_batch(1, timeout_s=0)
    assert [item.frame.index for item in first + second] == [0, 1]
    waits = hub.waits()
    behind, for_a_loop = list(waits["behind_its_camera"]), list(waits["for_a_loop"])
    assert behind[0] == 0.0 and for_a_loop[0] >= 0.2
    assert behind[1] >= 0.5 and for_a_loop[1] < 0.2
    assert [len(part) for part in hub.waits(1).values()] == [1, 1]


def one_frame_camera(hub: Hub, name: str) -> Camera:
    """A real-time camera of one frame; its reader hands it on once started."""
    image = np.zeros((48, 64, 3), np.uint8)
    return Camera(CameraSpec(name, "memory"), MemorySource([image], 1, fps=1000.0), hub, lambda: None,
                  lambda line: None, realtime=True)


def test_a_batch_window_waits_for_more_frames_until_the_batch_is_full():
    """detection.batch_window_ms: a loop that finds one frame of a batch of two waits, and takes both as soon as
    the second camera's frame is handed on, well before the window ends."""
    hub = Hub()
    hub.batch_window_s = 30.0
    first, second = one_frame_camera(hub, "cam0"), one_frame_camera(hub, "cam1")
    first.start()
    first.join(5.0)
    threading.Timer(0.2, second.start).start()
    batch = hub.take_batch(2, timeout_s=5.0)
    assert [item.camera.name for item in batch] == ["cam0", "cam1"]
    assert time.perf_counter() < batch[0].ready_at + 10.0


@pytest.mark.parametrize("window_s", [0.0, 0.3])
def test_a_batch_window_holds_a_lone_frame_for_the_window_from_when_it_was_ready(window_s):
    """No second frame comes: the lone frame is taken once it has waited the window (counted from when its reader
    handed it on, the same deadline for every loop), and at once without a window."""
    hub = Hub()
    hub.batch_window_s = window_s
    camera = one_frame_camera(hub, "cam0")
    camera.start()
    camera.join(5.0)
    batch = hub.take_batch(4, timeout_s=5.0)
    taken = time.perf_counter()
    assert [item.camera.name for item in batch] == ["cam0"]
    assert batch[0].ready_at + window_s <= taken < batch[0].ready_at + window_s + 5.0


def test_short_lock_turns_and_a_frozen_setup_while_detect_runs_and_python_defaults_after(tmp_path, small_config):
    """16 readers, the batch loops and the writer hand the interpreter lock around: at Python's 5 ms interval a
    thread back from a native call waits too long for it (frames dropped on a 16-core GPU host). A full collection
    pass over the imports and the model holds the lock for 0.1 s and more, and every camera stalled at once: during
    the run those objects are frozen out of the collector's passes. Both are given back after it."""
    from reidctl.apps.pipeline import SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    made_before = len(gc.get_objects())
    seen = []
    clip = write_video(tmp_path / "clip.avi", frames=30, size=(120, 160), fps=10.0)
    result = run_detect(load_config(small_config), camera_specs([str(clip)]), OutputRequest(no_output=True),
                        DetectOptions(realtime=True), warn=lambda line: None,
                        on_update=lambda stats: seen.append((sys.getswitchinterval(), gc.get_freeze_count())))
    assert result.summary["cameras"][0]["frames"] > 0
    assert seen and {interval for interval, _ in seen} == {SWITCH_INTERVAL_S} and SWITCH_INTERVAL_S < before
    assert min(frozen for _, frozen in seen) >= made_before // 2  # what was garbage already is collected first
    assert sys.getswitchinterval() == before
    assert gc.get_freeze_count() == 0


def test_ctrl_c_while_the_cameras_start_ends_the_run_without_waiting_for_batch_loops_never_begun(
        tmp_path, small_config, monkeypatch):
    """Ctrl-C between two cameras' starts: the second reader never began, so the run does not wait for it (joining a
    thread never started raises), and does not keep the model as if a step still ran on it."""
    from reidctl.apps import pipeline

    started, start = [], Camera.start

    def start_then_interrupt(camera):
        if started:
            raise KeyboardInterrupt
        started.append(camera)
        start(camera)

    monkeypatch.setattr(Camera, "start", start_then_interrupt)
    clips = [str(write_video(tmp_path / f"c{i}.avi", frames=10, size=(120, 160))) for i in range(2)]
    config = load_config(small_config)
    detector = create_detector(config)
    hub, specs = Hub(), camera_specs(clips)
    cameras = [Camera(spec, source, hub, lambda: None, lambda line: None)
               for spec, source in zip(specs, pipeline.open_cameras(specs, 5.0, None))]
    try:
        plan = pipeline.plan_outputs([spec.name for spec in specs], OutputRequest(no_output=True))
        result, left_running = pipeline._run(detector, hub, cameras, plan, 2, None, config.tracking,
                                             pipeline.RunCores.of(config, None))
    finally:
        detector.close()
        cameras[1].source.close()  # never started: its reader did not close it
    assert result.stopped == "interrupted" and not left_running


def test_each_batch_loop_runs_a_step_of_the_largest_batch_before_the_cameras_start(tmp_path, small_config,
                                                                                  monkeypatch):
    """What a thread pays once (a server's connection and shared memory region, a GPU library's handles) is paid by
    an untimed step of the largest batch on each batch loop before the first camera starts, not by the first
    second's frames; the run's own figures count its steps only."""
    from reidctl.apps import pipeline

    clips = [str(write_video(tmp_path / f"c{i}.avi", frames=8, size=(120, 160))) for i in range(3)]
    config = load_config(small_config)
    served_at_start, start = [], Camera.start

    def start_recording_served(camera):
        served_at_start.append(detector.served)
        start(camera)

    monkeypatch.setattr(Camera, "start", start_recording_served)
    with create_detector(config) as detector:
        loops = pipeline.batch_loops(detector)
        result = run_detect(config, camera_specs(clips), OutputRequest(no_output=True), DetectOptions(max_batch=2),
                            warn=lambda line: None, detector=detector)
        served_after = detector.served
    sizes = {int(size): count for size, count in result.summary["batch_sizes"].items()}
    # before the first camera: the run's warm-up on this thread (one frame on a CPU), then each loop's 2 frames
    assert served_at_start[0] == (1 + loops, 1 + 2 * loops)
    assert served_after == (1 + loops + sum(sizes.values()), 1 + 2 * loops + sum(s * n for s, n in sizes.items()))
    assert result.summary["frames"] == 24 == sum(s * n for s, n in sizes.items())


def test_a_long_run_keeps_its_newest_records_and_counts_every_frame(tmp_path, small_config, monkeypatch):
    """A deployment runs for days: latencies, drops and step records keep their newest entries only (here 8 to 16,
    as SAMPLES_KEPT asks), while the frame counts and the detections written cover the whole run."""
    from reidctl.apps import cameras, pipeline

    for module in (cameras, pipeline):
        monkeypatch.setattr(module, "SAMPLES_KEPT", 8)
        monkeypatch.setattr(module, "STAGE_SAMPLES_KEPT", 4)
    clip = write_video(tmp_path / "long.avi", frames=60, size=(120, 160))
    result = run_detect(load_config(small_config), camera_specs([str(clip)]), OutputRequest(mot=tmp_path / "d.txt"),
                        DetectOptions(max_batch=1), warn=lambda line: None)
    summary = result.summary
    assert summary["frames"] == summary["cameras"][0]["frames"] == 60 and len(mot_frames(tmp_path / "d.txt")) == 60
    (latencies,) = result.latencies.values()
    assert 8 <= len(latencies) < 16
    steps = sum(second["steps"] for second in summary["by_second"].values())
    assert 8 <= steps < 16 and sum(summary["batch_sizes"].values()) == 60  # the batch sizes are counts: whole run


def test_a_model_on_the_cpu_leaves_the_readers_their_cores_and_has_its_threads_back_after(tmp_path, small_config):
    """On the CPU the model's threads wait for each other at every layer, so a reader taking a core from one of
    them stalls all: the run gives each camera's reader a core (the model keeps at least one)."""
    cores = len(os.sched_getaffinity(0))
    clips = [str(write_video(tmp_path / f"c{i}.avi", frames=20, size=(120, 160))) for i in range(2)]
    before = torch.get_num_threads()
    seen = []
    torch.set_num_threads(cores)
    try:
        run_detect(load_config(small_config), camera_specs(clips), OutputRequest(no_output=True),
                   DetectOptions(realtime=True), warn=lambda line: None,
                   on_update=lambda stats: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {max(1, cores - 2)}
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_strict_camera_that_cannot_be_opened_is_named_and_nothing_is_written(tmp_path, small_config, video_file,
                                                                             stream_port):  # fmt: skip
    """--strict keeps the refusal (without it the other cameras start and the stream is retried)."""
    out = tmp_path / "out"
    started = time.monotonic()
    result = invoke("detect", f"door={video_file}", f"yard=http://127.0.0.1:{stream_port}/live.ts", "-c", small_config,
                    "--mot", out, "--timeout", "1", "--no-progress", "--strict")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: camera yard: cannot open stream http://127.0.0.1:{stream_port}/live.ts"
    assert time.monotonic() - started < 30
    assert not out.exists()


def test_silent_server_times_out_instead_of_hanging(tmp_path, small_config, stream_port):
    listener = socket.create_server(("127.0.0.1", stream_port))  # accepts connections, never answers
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        started = time.monotonic()
        result = invoke("detect", f"http://127.0.0.1:{stream_port}/live.ts", "-c", small_config, "--timeout", "0.5",
                        "--mot", tmp_path / "d.txt", "--no-progress")
        assert result.exit_code == 2 and "cannot open stream" in result.stderr
        assert time.monotonic() - started < 20
    finally:
        listener.close()


@needs_ffmpeg
@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_stream_that_fails_reconnects_while_other_cameras_go_on(tmp_path, small_config, stream_port, fault):
    clip = write_video(tmp_path / "clip.avi", frames=60, size=(120, 160), fps=10.0)
    servers = [StreamServer(stream_port)]
    specs = camera_specs([f"street={servers[0].url}", f"hall={clip}"])
    progress = {"faulted_at": None, "restarted_at": None}

    def watch(stats: dict) -> None:  # runs in the main thread every half second: plays the fault
        street, hall = stats["cameras"]
        if progress["faulted_at"] is None and street["frames"] >= 8:
            if fault == "killed":
                servers[-1].process.kill()
            else:
                servers[-1].process.send_signal(signal.SIGSTOP)  # the stream stalls: the read timeout must notice
            progress["faulted_at"] = hall["frames"]
        elif street["state"] == "reconnecting" and (
                servers[-1].process.poll() is not None  # gone: the fault, or the server dropped its client early
                or progress["faulted_at"] is not None and progress["restarted_at"] is None):  # the stalled one
            servers[-1].stop()
            servers.append(StreamServer(stream_port))
            if progress["faulted_at"] is not None:  # the restart that answers the fault
                progress["restarted_at"] = hall["frames"]

    warnings = []
    options = DetectOptions(realtime=True, max_frames=40, timeout_s=0.5)
    jsonl = tmp_path / "d.jsonl"
    try:
        result = run_detect(load_config(small_config), specs, OutputRequest(jsonl=jsonl), options,
                            warn=warnings.append, on_update=watch)
    finally:
        for server in servers:
            server.stop()
    street, hall = result.summary["cameras"]
    assert result.stopped is None
    assert street["frames"] == 40 and street["reconnects"] >= 1 and street["state"] == "ended"
    assert hall["frames"] == 40 and hall["state"] == "ended"  # a busy machine may drop some of its real-time frames
    assert progress["restarted_at"] is not None, "the stream's failure was not seen"
    assert progress["restarted_at"] > progress["faulted_at"], "the file camera stopped while the stream was down"
    assert any("camera street:" in w and "reconnecting" in w for w in warnings)
    assert "camera street: reconnected" in warnings
    # A live camera's frame numbers run on across the reconnection.
    numbers = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines() if '"street"' in line]
    assert len(numbers) == 40 and numbers == sorted(set(numbers))


def test_camera_names_from_sources(tmp_path):
    specs = camera_specs(["0", "http://cam.local:8554/live.ts?profile=a=b", "/data/gate.mp4", "x/gate.mp4", "n1=7"])
    assert [s.name for s in specs] == ["camera0", "cam.local_8554_live", "gate", "gate-2", "n1"]
    assert specs[1].source == "http://cam.local:8554/live.ts?profile=a=b" and specs[4].source == "7"
    for entries, message in ((["a=x.mp4", "a=y.mp4"], "camera name given twice: a"), (["bad name=x"], "may hold only"),
                             (["n="], "empty source"), ([], "no source given")):
        with pytest.raises(ReidctlError, match=message):
            camera_specs(entries)


def test_a_sources_file_with_a_byte_order_mark_names_its_first_camera_as_written(tmp_path):
    sources = tmp_path / "cams.txt"
    sources.write_bytes("\ufefflobby=rtsp://cam1/stream\n# a comment\ngate=rtsp://cam2/stream\n".encode())
    specs = camera_specs(read_source_list(sources))
    assert [s.name for s in specs] == ["lobby", "gate"]


@pytest.mark.slow
@pytest.mark.xdist_group("triton-server")
def test_triton_server_killed_mid_run_keeps_every_finished_frame(tmp_path, nano_checkpoint):
    """A real Triton server serves two cameras (one request each at a time); killed mid-run, the outputs keep every
    finished frame, all alike, and the run says why it stopped."""
    pytest.importorskip("tritonclient.grpc")
    from helpers import write_config
    from reidctl.triton.repository import write_repository
    from reidctl.triton.server import stop_server

    repository = tmp_path / "repo"
    config = write_config(tmp_path / "c.yaml", nano_checkpoint)
    write_repository(load_config(config), repository, warn=lambda message: None)
    state = start_test_server(repository, warn=lambda message: None)
    try:
        config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": f"localhost:{state.grpc_port}",
                                                                             "timeout": 5.0})
        clips = [f"{name}={write_video(tmp_path / f'{name}.avi', frames=2000, size=(120, 160))}" for name in "ab"]
        process = subprocess.Popen(
            [sys.executable, "-m", "reidctl", "detect", *clips, "-c", str(config), "--backend", "triton",
             "--mot", str(tmp_path / "mot"), "--jsonl", str(tmp_path / "all.jsonl"), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob(".all.jsonl.*")):
            time.sleep(0.1)
        os.killpg(state.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        stop_server(repository)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: stopped after ")
    assert "the outputs hold every finished frame" in stderr
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert records
    for name in "ab":
        frames = [r["frame"] for r in records if r["camera"] == name]
        assert frames == list(range(len(frames))) and len(frames) < 2000
        assert mot_frames(tmp_path / "mot" / f"{name}.txt") == [f + 1 for f in frames]
    assert not list(tmp_path.glob("**/.*.tmp")) and not list(tmp_path.rglob(".all.jsonl.*"))


def test_a_dead_stream_at_start_is_retried_while_the_other_cameras_run(tmp_path, small_config):
    """One camera's stream is down when the run starts: the good camera runs, the dead one is said once and retried
    with back-off (as mid-run); --strict keeps the refusal, and a run with no camera that opens is still an error."""
    clip = write_video(tmp_path / "good.avi", frames=6, size=(120, 160))
    dead = f"http://127.0.0.1:{free_ports(1)[0]}/stream"
    specs = camera_specs([f"good={clip}", f"door={dead}"])
    warnings: list[str] = []

    def stop_once_the_good_camera_ended(stats: dict) -> None:
        by_name = {camera["name"]: camera for camera in stats["cameras"]}
        if by_name["good"]["state"] == "ended":
            assert by_name["door"]["state"] == "reconnecting" and by_name["door"]["frames"] == 0
            raise KeyboardInterrupt

    result = run_detect(load_config(small_config), specs, OutputRequest(mot=tmp_path / "mot"),
                        DetectOptions(timeout_s=1.0), warn=warnings.append, on_update=stop_once_the_good_camera_ended)
    assert result.stopped == "interrupted"
    assert [camera["frames"] for camera in result.summary["cameras"]] == [6, 0]
    assert any(line.startswith("warning: camera door: ") and "retried with back-off" in line for line in warnings)
    assert len((tmp_path / "mot" / "good.txt").read_text().splitlines()) > 0
    with pytest.raises(ReidctlError, match="camera door: "):
        run_detect(load_config(small_config), specs, OutputRequest(mot=tmp_path / "strict"),
                   DetectOptions(timeout_s=1.0, strict=True), warn=warnings.append)
    with pytest.raises(ReidctlError):
        run_detect(load_config(small_config), camera_specs([dead]), OutputRequest(mot=tmp_path / "none.txt"),
                   DetectOptions(timeout_s=1.0), warn=warnings.append)
