"""`reidctl bench` end to end on real backends, frames in memory played as cameras through detect's pipeline, and
bad input."""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import (TENSORRT_MARKS, assert_same_detections, free_ports, project_env, start_test_server, take_sigint,
                     write_config)
from reidctl.cli import app
from reidctl.config import load_config
from reidctl.apps.bench import run_bench, stream_modes
from reidctl.apps.bench_streams import measure_concurrent
from reidctl.apps.bench_report import BENCH_SCHEMA_VERSION, BenchSettings, load_report
from reidctl.apps.clients import ClientProcesses, cameras_together, closed_loop
from reidctl.core.detector import create_detector
from reidctl.core.registry import available_backends, get_backend
from reidctl.apps.pipeline import OutputRequest, run_detect
from reidctl.errors import ReidctlError
from reidctl.io.sources import CameraSpec, MemorySource
from reidctl.io.synthetic import synthetic_frame
from reidctl.triton.requests import frame_sender

runner = CliRunner()
SUMMARY_KEYS = {"count", "avg_ms", "min_ms", "max_ms", "std_ms", "p50_ms", "p95_ms", "p99_ms", "fps"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bench_cli_writes_json_plot_and_tables(tmp_path, small_config, video_file):
    output = tmp_path / "out" / "bench.json"
    result = invoke("bench", "--backends", "pytorch", "--iters", 6, "--warmup", 1, "--cameras", "3,1",
                    "--source", video_file, "-c", small_config, "-o", output, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    for title in ("Single Stream Results", "Stage Breakdown", "Multi-Stream Results", "Peak GPU Memory"):
        assert title in result.output

    data = json.loads(output.read_text())
    assert data["schema_version"] == BENCH_SCHEMA_VERSION
    assert data["environment"]["gpu"]["name"] == "cpu"
    assert set(data["environment"]["versions"]) == {"torch", "onnxruntime", "tensorrt", "tritonclient"}
    assert data["environment"]["versions"]["torch"]
    assert data["config"]["detection"]["test_size"] == [128, 160]
    assert data["settings"]["cameras"] == [1, 3] and data["settings"]["frames"] == str(video_file)
    assert data["settings"]["frame_count"] == 12  # every frame of the clip, held in memory

    (backend,) = data["backends"]
    assert backend["status"] == "ok" and backend["reason"] is None
    assert backend["runner"]["device"] == "cpu" and backend["peak_memory_bytes"] is None
    assert set(backend["single_stream"]) == SUMMARY_KEYS and backend["single_stream"]["count"] == 6
    s = backend["single_stream"]
    assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert set(backend["stages"]) == {"preprocess", "inference", "postprocess"}
    assert all(stage["count"] == 6 for stage in backend["stages"].values())
    runs = {(m["mode"], m["cameras"]): m for m in backend["multi_stream"]}
    assert set(runs) == {("sequential", 1), ("pipeline", 1), ("sequential", 3), ("pipeline", 3)}
    # The load NMS faced, over every frame measured: every frame of the test model has candidates.
    load = backend["detection_load"]
    assert load["candidates_per_frame"] >= load["kept_per_frame"] > 0
    assert f"{load['candidates_per_frame']:.1f} / {load['kept_per_frame']:.1f}" in result.output
    for run in runs.values():
        assert run["requests"] == 6 and run["latency"]["count"] == 6
        assert run["throughput_fps"] == pytest.approx(6 / run["wall_s"])
    pipeline = runs[("pipeline", 3)]
    assert sum(int(size) * count for size, count in pipeline["batch_sizes"].items()) == 6  # the warm-up's left out
    assert max(int(size) for size in pipeline["batch_sizes"]) <= 3  # a batch never exceeds the camera count
    assert data["settings"]["max_batch"] is None and "max_delay_ms" not in data["settings"]  # detect's default

    plot = output.with_suffix(".png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in output.parent.iterdir()) == ["bench.json", "bench.png"]  # no temporary files
    assert load_report(output).backends[0].single_stream.count == 6


def _with_detection(config, **values):
    return dataclasses.replace(config, detection=dataclasses.replace(config.detection, **values))


@contextlib.contextmanager
def _onnxruntime(config, tmp_path):
    from reidctl.models.loader import load_detection_model
    from reidctl.export.onnx import export_onnx

    onnx_path = tmp_path / "nano.onnx"
    model, spec = load_detection_model(config.detection)
    export_onnx(model, spec, onnx_path, config.detection.input_size)
    yield _with_detection(config, onnx_path=str(onnx_path))


@contextlib.contextmanager
def _triton(config, tmp_path):
    from reidctl.triton.repository import write_repository
    from reidctl.triton.server import stop_server

    repository = tmp_path / "repository"
    write_repository(config, repository, warn=lambda message: None)
    state = start_test_server(repository, warn=lambda message: None)
    try:
        yield _with_detection(
            config, triton=dataclasses.replace(config.detection.triton, url=f"localhost:{state.grpc_port}")
        )
    finally:
        stop_server(repository)


@contextlib.contextmanager
def _as_configured(config, tmp_path):
    yield config


# What each backend needs before it can be measured here (an exported model, a running server).
PREPARE = {"pytorch": _as_configured, "onnxruntime": _onnxruntime, "triton": _triton}
BACKEND_MARKS = {"triton": [pytest.mark.slow, pytest.mark.xdist_group("triton-server")], "tensorrt": TENSORRT_MARKS}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=BACKEND_MARKS[name]) if name in BACKEND_MARKS else name
        for name in available_backends()
    ],
)
def test_bench_measures_every_registered_backend(name, tmp_path, small_config):
    reason = available_backends()[name]
    if reason:
        assert name == "tensorrt", f"only TensorRT may be missing here, but {name} is: {reason}"
        pytest.skip(f"TensorRT cannot run here: {reason}")
    assert name in PREPARE, f"backend '{name}' is registered but this test does not know how to prepare it"
    with PREPARE[name](load_config(small_config), tmp_path) as config:
        settings = BenchSettings([name], iters=4, warmup=1, cameras=[2])
        report = run_bench(config, settings)
        with create_detector(config, name) as detector:
            modes = set(stream_modes(detector))
    (result,) = report.backends
    assert result.status == "ok", result.reason
    assert result.single_stream.count == 4 and set(result.stages) == {"preprocess", "inference", "postprocess"}
    assert {s.mode for s in result.multi_stream} == modes
    assert all(s.cameras == 2 and s.latency.count == 4 and s.throughput_fps > 0 for s in result.multi_stream)
    for stream in result.multi_stream:
        if stream.mode == "sequential":
            assert stream.batch_sizes is None
        else:  # the batches formed (by detect's batch loops or the server) account for every frame
            assert sum(size * count for size, count in stream.batch_sizes.items()) == 4


def test_failed_backend_is_recorded_and_the_others_still_run(tmp_path, nano_checkpoint):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07 not a protobuf")
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, onnx_path=str(tmp_path / "corrupt.onnx"))
    output = tmp_path / "bench.json"
    args = ("--iters", 2, "--warmup", 1, "--cameras", 1, "-c", config, "-o", output, "--no-progress")
    result = invoke("bench", "--backends", "onnxruntime,pytorch", *args)
    statuses = {b["name"]: (b["status"], b["reason"]) for b in json.loads(output.read_text())["backends"]}
    assert statuses["pytorch"] == ("ok", None)
    assert statuses["onnxruntime"][0] == "failed" and "corrupt.onnx" in statuses["onnxruntime"][1]
    assert result.exit_code == 2, result.output  # a named backend failed; the results of the others are kept
    error = one_line_error(result)
    assert "not measured: onnxruntime failed: " in error and error.endswith(f"{output} keeps the results of pytorch")


def test_all_lists_backends_this_machine_lacks_without_failing(tmp_path, nano_checkpoint):
    # No ONNX file, no Triton server on this port (and no TensorRT here): 'all' measures what can run here.
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, onnx_path=str(tmp_path / "none.onnx"),
                          triton={"url": f"localhost:{free_ports(1)[0]}"})  # fmt: skip
    output = tmp_path / "bench.json"
    result = invoke("bench", "--backends", "all", "--iters", 2, "--warmup", 0, "--cameras", 1, "-c", config,
                    "-o", output, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    statuses = {b["name"]: (b["status"], b["reason"]) for b in json.loads(output.read_text())["backends"]}
    assert statuses["pytorch"] == ("ok", None)
    assert statuses["onnxruntime"] == ("unavailable", f"ONNX model not found: {tmp_path / 'none.onnx'} "
                                                      "(create it with `reidctl export-onnx`)")  # fmt: skip
    assert statuses["triton"][0] == "unavailable" and "not reachable" in statuses["triton"][1]
    assert "onnxruntime unavailable: ONNX model not found" in result.output


def test_a_named_backend_that_cannot_be_measured_is_an_error_and_the_others_are_kept(tmp_path, nano_checkpoint):
    port = free_ports(1)[0]
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": f"localhost:{port}"})
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "reidctl", "bench", "--backends", "pytorch,triton", "--iters", "2",
               "--warmup", "0", "--cameras", "1", "-c", str(config), "-o", str(output), "--no-progress"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=project_env())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: not measured: triton unavailable: Triton server at localhost:{port} is "
                                    "not reachable")  # fmt: skip
    assert result.stderr.strip().endswith(f"{output} keeps the results of pytorch")
    statuses = {b["name"]: b["status"] for b in json.loads(output.read_text())["backends"]}
    assert statuses == {"pytorch": "ok", "triton": "unavailable"}


@pytest.mark.parametrize("target", ["directory", "/proc/bench.json", "/proc/none/bench.json"])
def test_output_path_is_checked_before_measuring(tmp_path, small_config, target):
    output = tmp_path if target == "directory" else Path(target)
    # A million iterations: the test only finishes if the check comes before the measurements.
    error = one_line_error(invoke("bench", "--backends", "pytorch", "--iters", 10**6, "-c", small_config,
                                  "-o", output, "--no-progress"))  # fmt: skip
    expected = {"directory": f"output {tmp_path} is a directory: give a file name",
                "/proc/bench.json": "cannot write to /proc: ",
                "/proc/none/bench.json": "cannot create output directory /proc/none: "}[target]  # fmt: skip
    assert expected in error


def test_outputs_never_write_over_each_other_or_an_input(tmp_path, small_config):
    plot_named_json = one_line_error(invoke("bench", "-c", small_config, "-o", tmp_path / "r.png", "--no-progress"))
    assert f"--output and the plot of --output both write {tmp_path}/r.png" in plot_named_json
    over_config = one_line_error(invoke("bench", "-c", small_config, "-o", small_config, "--no-progress"))
    assert f"--output would write over --config ({small_config})" in over_config
    assert not (tmp_path / "r.png").exists() and "detection" in small_config.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--backends", "pytorch,nosuch"), "unknown backend 'nosuch'"),
        (("--iters", 0), "--iters must be a positive integer"),
        (("--warmup", -1), "--warmup must be 0 or more"),
        (("--cameras", "1,0"), "--cameras must be comma-separated positive integers"),
        (("--cameras", "four"), "--cameras must be comma-separated positive integers"),
        (("--cameras", "1,,4"), "--cameras must be comma-separated positive integers, got '1,,4'"),
        (("--cameras", "4", "--client-processes", 1000), "--client-processes 1000: at most one per camera, 4 for"),
        (("--cameras", "100000", "--client-processes", 99999), "of memory available here hold"),
        (("--source", "no/such/video.avi"), "source not found"),
        (("--frame-size", "64x"), "size must look like 640x640"),
        (("--frame-size", "64x64", "--source", "clip.avi"), "--frame-size sets the size of synthetic frames"),
    ],
)
def test_bad_input_is_one_line_error(args, message, tmp_path, small_config):
    output = tmp_path / "bench.json"
    error = one_line_error(invoke("bench", *args, "-c", small_config, "-o", output, "--no-progress"))
    assert message in error
    assert not output.exists()


def test_unreadable_source_is_one_line_error(tmp_path, small_config):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video at all")
    error = one_line_error(
        invoke("bench", "--source", broken, "-c", small_config, "-o", tmp_path / "b.json", "--no-progress")
    )
    assert "broken.avi" in error


def _frames_of_distinct_scale(count: int) -> list[np.ndarray]:
    # Different widths give different letterbox ratios, so each frame's boxes are its own.
    return [synthetic_frame(i, (240, 320 + 48 * i)) for i in range(count)]


def test_frames_in_memory_play_as_cameras_through_detects_pipeline(tmp_path, small_config):
    """Each camera plays its own count of frames from a phase of its own; batches form across the cameras, and
    every camera's frame gets its own detections."""
    frames = _frames_of_distinct_scale(4)
    counts = [3, 5, 4, 0]  # a camera with nothing to play ends at once
    jsonl = tmp_path / "d.jsonl"
    config = load_config(small_config)
    with create_detector(config) as detector:
        expected = [detector.detect(frame) for frame in frames]
        sources = [MemorySource(frames, count, phase=camera) for camera, count in enumerate(counts)]
        specs = [CameraSpec(f"cam{camera}", source.description) for camera, source in enumerate(sources)]
        result = run_detect(config, specs, OutputRequest(jsonl=jsonl), detector=detector, sources=sources)
    assert result.stopped is None and [c["frames"] for c in result.summary["cameras"]] == counts
    assert result.summary["cameras"][0]["source"] == "4 frames in memory" and result.summary["dropped"] == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == sum(counts)
    for record in records:  # camera c's frame i is frames[(c + i) % 4]
        camera = int(record["camera"].removeprefix("cam"))
        want = expected[(camera + record["frame"]) % len(frames)]
        assert_same_detections(record["detections"], want, threshold=config.detection.conf_threshold)
    assert max(int(size) for size in result.summary["batch_sizes"]) > 1  # frames of several cameras in one batch
    assert not np.allclose(expected[0][:, :4].max(), expected[1][:, :4].max())  # the check can tell frames apart


def test_concurrent_clients_share_one_detector_and_a_failure_stops_them_all(small_config):
    frames = _frames_of_distinct_scale(3)
    ticks = []
    with create_detector(load_config(small_config)) as detector:
        stream = measure_concurrent(
            detector, frames, 3, BenchSettings(["pytorch"], iters=6, warmup=2), lambda: ticks.append(1)
        )
    assert (stream.mode, stream.cameras, stream.requests, stream.latency.count) == ("concurrent", 3, 6, 6)
    assert len(ticks) == 8 and stream.throughput_fps == pytest.approx(6 / stream.wall_s)

    served, lock = [], threading.Lock()

    def serve(frame):
        with lock:
            if len(served) == 2:
                raise RuntimeError("server went away")
            served.append(frame)

    with pytest.raises(RuntimeError, match="server went away"):
        closed_loop(serve, frames, 3, 1000, lambda: None)
    assert len(served) == 2  # the other cameras stopped instead of serving the remaining requests


def test_ctrl_c_before_the_cameras_start_releases_them_instead_of_hanging():
    """Ctrl-C while the camera threads wait for their common start (a busy host starts threads slowly): they are
    released and never run, the run stops, and the interrupt reaches the caller instead of a wait forever."""
    ran, stopped = [], threading.Event()

    def interrupt() -> None:  # runs where the caller waits for the cameras to be up: Ctrl-C lands there
        raise KeyboardInterrupt

    done = threading.Event()

    def run() -> None:
        with contextlib.suppress(KeyboardInterrupt):
            cameras_together(ran.append, 4, stopped.set, before_start=interrupt)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout=10), "the camera threads were left waiting for their start"
    assert stopped.is_set() and ran == []


@pytest.mark.slow
@pytest.mark.xdist_group("triton-server")
def test_triton_requests_may_take_as_long_as_this_machine_needs(tmp_path, nano_checkpoint):
    """A timeout far below the time 8 queued 640x640 frames take on this CPU: requests would time out without the
    timeout derived from the first request (bench rows 'failed' on a slow machine)."""
    path = write_config(tmp_path / "c.yaml", nano_checkpoint, test_size=[640, 640], triton={"timeout": 0.2})
    config = load_config(path)
    with _triton(config, tmp_path) as config:
        settings = BenchSettings(["triton"], iters=8, warmup=0, cameras=[8])
        (result,) = run_bench(config, settings).backends
        assert result.status == "ok", result.reason
        assert result.multi_stream[0].latency.max_ms > 200  # slower than the configured timeout, and not failed
        with create_detector(config, "triton") as detector:  # the same load with the configured timeout only
            frame = synthetic_frame(0, (640, 640))
            detector.detect(frame)  # the first request may take long: it carries the server's one-off costs
            with pytest.raises(ReidctlError, match=r"timed out after 0.2 s \(detection.triton.timeout\)"):
                closed_loop(detector.detect, [frame], 8, 32, lambda: None)


def test_client_processes_split_the_cameras_and_the_server_serves_every_request(tmp_path, nano_checkpoint):
    """--client-processes: the closed loop's requests come from two processes; the server's own statistics count
    each measured one."""
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint))
    with _triton(config, tmp_path) as config:
        settings = BenchSettings(["triton"], iters=24, warmup=4, cameras=[3], client_processes=2)
        report = run_bench(config, settings)
        unreachable = _with_detection(config, triton=dataclasses.replace(config.detection.triton, url="localhost:9"))
        with pytest.raises(ReidctlError, match="client process: .*localhost:9"):
            ClientProcesses(unreachable, "triton", [synthetic_frame(0, (128, 160))], 2)
        frames = [synthetic_frame(i, (240, 320)) for i in range(3)]
        with ClientProcesses(config, "triton", frames, 2, get_backend("triton").frame_sender) as clients:
            latencies, _ = clients.closed_loop(2, 6)
            for process in clients._processes:  # they only send frames: no torch, a fraction of its memory
                maps = Path(f"/proc/{process.pid}/maps").read_text()
                assert "libtorch" not in maps and "libc10" not in maps
                rss_kib = int(next(line for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                                   if line.startswith("VmRSS:")).split()[1])  # fmt: skip
                assert rss_kib < 400 * 1024, rss_kib
        assert len(latencies) == 6
        with frame_sender(config) as sender, create_detector(config, "triton") as detector:
            for frame in frames:  # the same rows as the Detector through the Triton runner
                np.testing.assert_array_equal(sender.detect(frame), detector.detect(frame))
        # Ctrl-C reaches the bench and its client processes (the terminal's process group): one word, no traceback
        config_file = write_config(tmp_path / "cli.yaml", nano_checkpoint, triton={"url": config.detection.triton.url})
        output = tmp_path / "stopped.json"
        args = ["-b", "triton", "--client-processes", 2, "--cameras", 2, "--iters", 4, "--warmup", 0, "--saturation",
                "--fps", 5, "--seconds", 600, "-c", config_file, "-o", output]  # fmt: skip
        code, printed = bench_in_a_terminal(args, b"open loop", lambda process: os.killpg(process.pid, signal.SIGINT))
        assert code == 130 and "Traceback" not in printed and "KeyboardInterrupt" not in printed, printed[-3000:]
        assert json.loads(output.read_text())["partial"] is True
    (result,) = report.backends
    assert result.status == "ok", result.reason
    (run,) = result.multi_stream
    assert (run.mode, run.cameras, run.requests, run.latency.count) == ("concurrent", 3, 24, 24)
    assert sum(size * count for size, count in run.batch_sizes.items()) == 24
    assert report.settings["client_processes"] == 2


def bench_in_a_terminal(args: list, until: bytes, stop, timeout: float = 240.0) -> tuple[int, str]:
    """`reidctl bench ARGS` in a terminal of its own (a pty: its live progress shows each phase) and its own process
    group; once ``until`` shows, ``stop(process)`` sends the signal. Returns the exit code and everything it printed.
    A bench that does not end fails the test with its threads' stacks (Python's fault handler)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "reidctl", "bench", *map(str, args)], stdin=subprocess.DEVNULL,
                               stdout=slave, stderr=slave, env=project_env(COLUMNS="200", PYTHONFAULTHANDLER="1"),
                               start_new_session=True, preexec_fn=take_sigint)  # fmt: skip
    os.close(slave)
    printed, signalled, deadline = b"", False, time.monotonic() + timeout

    def read(seconds: float) -> bool:
        """What it printed in up to ``seconds``; False once the terminal is closed (the command has ended)."""
        nonlocal printed
        if select.select([master], [], [], seconds)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return False
            printed += chunk
            return bool(chunk)
        return True

    try:
        while time.monotonic() < deadline and read(0.5):  # read on: a terminal nobody reads blocks its writer
            if not signalled and until in printed:
                stop(process)
                signalled = True
                # a stop closes client processes and writes the plot: slow on a busy host
                deadline = time.monotonic() + 120
        if process.poll() is None and time.monotonic() >= deadline:
            stage = "did not end 120 s after the signal" if signalled else f"showed no {until!r} in {timeout:g} s"
            os.kill(process.pid, signal.SIGABRT)  # the fault handler prints every thread's stack
            end = time.monotonic() + 10
            while time.monotonic() < end and read(0.5):
                pass
            pytest.fail(f"bench {stage}; it printed: {printed.decode(errors='replace')[-6000:]}")
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(master)
    assert signalled, printed.decode(errors="replace")[-2000:]
    return code, printed.decode(errors="replace")


@pytest.mark.parametrize(("sig", "code", "word"),
                         [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_stopped_bench_saves_what_it_measured_marked_partial(tmp_path, small_config, sig, code, word):
    output = tmp_path / "bench.json"
    args = ["-b", "pytorch", "--iters", 20, "--warmup", 2, "--cameras", 1, "--fps", 5, "--seconds", 600,
            "-c", small_config, "-o", output]  # fmt: skip
    exit_code, printed = bench_in_a_terminal(args, b"open loop", lambda process: os.kill(process.pid, sig))
    assert exit_code == code, printed[-2000:]
    assert "Traceback" not in printed and f"{word}: {output} keeps what was measured" in printed
    data = json.loads(output.read_text())
    assert data["partial"] is True and data["stopped"] == word
    (pytorch,) = data["backends"]
    assert pytorch["status"] == "failed" and pytorch["reason"] == f"{word} while it was measured"
    assert pytorch["single_stream"]["count"] == 20 and pytorch["stages"]["inference"]["count"] == 20
    assert Path(output.with_suffix(".png")).is_file()
