"""Capacity at camera rate: open-loop pacing and drops, the capacity search, `recommend --verify` and `--deploy`."""

import json
import shlex
import subprocess
import time

import pytest
from typer.testing import CliRunner

from reidctl.cli import app
from reidctl.config import load_config, to_dict
from reidctl.apps.bench_streams import OpenLoopLoad, open_loop, run_open_loop
from reidctl.apps.bench_report import BackendResult, BenchReport, ParityResult, StreamResult, load_report
from reidctl.apps.capacity import CameraPlan, measure_capacity, search_capacity, search_max_cameras
from reidctl.apps.recommend import Need
from reidctl.core.detector import create_detector
from reidctl.apps.stats import LatencySummary
from reidctl.io.synthetic import synthetic_frame

runner = CliRunner()
FRAMES = [synthetic_frame(i, (128, 160)) for i in range(4)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def test_open_loop_in_process_plays_each_camera_at_its_rate_through_detects_pipeline(small_config):
    """2 cameras at 8 FPS on the CPU with YOLOX-nano, through detect's pipeline in real time: every frame is played
    on its schedule and answered (a busy 2-core machine may stretch one answer past the 125 ms period: the camera's
    next frame then replaces it, counted as dropped, instead of queueing)."""
    config = load_config(small_config)
    load = OpenLoopLoad(cameras=2, fps=8.0, seconds=2.0, latency_ms=1000.0, warmup_s=0.25)
    with create_detector(config) as detector:
        started = time.perf_counter()
        run = run_open_loop(config, detector, FRAMES, load)
        elapsed = time.perf_counter() - started
    assert elapsed > 2.0  # the warm-up run's last frames are due at 0.125 s, the measured run's at 1.875 s
    assert run.load == "open" and run.mode == "pipeline" and run.fps_per_camera == 8.0
    for camera in run.per_camera:
        assert camera.due == 16  # 2 s x 8 FPS
        assert camera.served + camera.dropped == 16 and camera.dropped <= 1
        assert camera.achieved_fps == pytest.approx(8.0, rel=0.2) and camera.send_lag_p99_ms is None
        assert camera.late == 0 and camera.p99_ms < 1000.0
    assert run.requests == sum(c.served for c in run.per_camera) == run.latency.count
    assert run.wall_s == pytest.approx(2.0, rel=0.25) and run.throughput_fps == pytest.approx(run.requests / run.wall_s)
    assert sum(run.batch_sizes.values()) > 0 and run.late == 0 and run.dropped == sum(c.dropped for c in run.per_camera)


def test_open_loop_in_process_counts_the_frames_it_drops_and_those_answered_late(small_config):
    """Three cameras at 400 FPS each: more than YOLOX-nano on this CPU takes. A camera's frame that no batch took
    before its next one is dropped, and every answer is later than a 1 ms budget."""
    config = load_config(small_config)
    load = OpenLoopLoad(cameras=3, fps=400.0, seconds=0.5, latency_ms=1.0, warmup_s=0.0)
    with create_detector(config) as detector:
        run = run_open_loop(config, detector, FRAMES, load)
    assert run.dropped == sum(c.dropped for c in run.per_camera) > 0
    assert all(c.due == 200 and c.served + c.dropped == 200 for c in run.per_camera)
    assert run.late == run.requests == sum(c.late for c in run.per_camera) > 0
    assert not run.within(1000.0)  # dropped frames fail a run whatever its latency


def test_a_camera_whose_frame_is_in_flight_drops_the_next_instead_of_queueing():
    """A 250 ms service at 10 FPS: each camera sends at 0, 0.3, 0.6, 0.9 s and drops the frames due in between."""

    def slow_service(frame):
        time.sleep(0.25)

    load = OpenLoopLoad(cameras=3, fps=10.0, seconds=1.0, latency_ms=100.0, warmup_s=0.0)
    started = time.perf_counter()
    cameras, latencies = open_loop(slow_service, FRAMES, load)
    assert time.perf_counter() - started < 1.6  # nothing queued past the window
    for camera in cameras:
        assert camera.due == 10 and camera.served + camera.dropped == 10
        assert camera.served == 4 and camera.late == 4  # every answer took 250 ms > 100 ms
    assert len(latencies) == 12 and min(latencies) >= 0.25


def test_jitter_moves_send_times_but_keeps_the_rate():
    sent = []
    load = OpenLoopLoad(cameras=1, fps=20.0, seconds=1.0, latency_ms=100.0, jitter=0.8, warmup_s=0.0)
    (camera,), _ = open_loop(lambda frame: sent.append(time.perf_counter()), FRAMES, load)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert abs(camera.due - 20) <= 1 and camera.dropped == 0  # a send at a window's edge may move across it
    assert max(gaps) - min(gaps) > 0.02  # +-40% of a 50 ms period moves sends by up to 20 ms each
    assert sum(gaps) / len(gaps) == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(
    ("capacity", "limit", "expected_tried"),
    [
        (13, 64, [1, 2, 4, 8, 16, 12, 14, 13]),
        (1, 64, [1, 2]),
        (0, 64, [1]),
        (100, 64, [1, 2, 4, 8, 16, 32, 64]),
        (40, 50, [1, 2, 4, 8, 16, 32, 50, 41, 36, 38, 39, 40]),
    ],
)
def test_capacity_search_converges_on_a_capacity_curve(capacity, limit, expected_tried):
    outcome = search_max_cameras(lambda cameras: cameras <= capacity, limit)
    assert outcome.cameras == min(capacity, limit) and outcome.resolved
    assert [cameras for cameras, _ in outcome.tried] == expected_tried
    assert outcome.at_limit == (capacity >= limit)


def test_capacity_search_is_bounded_by_its_run_budget():
    outcome = search_max_cameras(lambda cameras: cameras <= 1000, limit=1024, max_runs=6)
    assert len(outcome.tried) == 6 and outcome.cameras == 32 and not outcome.resolved


def test_capacity_search_starting_above_the_capacity_bisects_down():
    outcome = search_max_cameras(lambda cameras: cameras <= 5, limit=64, start=16)
    assert outcome.cameras == 5 and [c for c, _ in outcome.tried] == [16, 8, 4, 6, 5]


def test_measured_capacity_search_on_this_machine(tmp_path, small_config):
    """A real search through detect's pipeline: YOLOX-nano on the CPU serves 4 cameras at 2 FPS within a second (a
    frame may wait up to 500 ms: another test busy on this machine's cores drops none), and none within 1 ms."""
    config = load_config(small_config)
    plan = CameraPlan((120, 160), seconds=1.0)
    roomy = measure_capacity(config, "pytorch", 2.0, 1000.0, plan, tmp_path, limit=4)
    assert roomy.status == "ok" and roomy.outcome.cameras == 4 and roomy.outcome.at_limit, roomy.runs
    assert [run.cameras for run in roomy.runs] == [1, 2, 4] and all(run.within(1000.0) for run in roomy.runs)
    assert all(run.mode == "pipeline" and run.requests == 2 * run.cameras for run in roomy.runs)
    tight = measure_capacity(config, "pytorch", 2.0, 1.0, plan, tmp_path, limit=4)
    assert tight.outcome.cameras == 0 and [run.cameras for run in tight.runs] == [1]


def test_max_cameras_searches_this_machine_and_recommends_from_its_runs(tmp_path, small_config, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no bench file: not the one a developer's own bench left in runs/bench/
    result = invoke("recommend", "-c", small_config, "--cameras", 2, "--fps", 4, "--latency-ms", 1000, "--max-cameras",
                    "-b", "pytorch", "--camera-limit", 2, "--seconds", 0.5, "--resolution", "120x160")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "never failed: may serve more" in result.output
    assert "This machine (cpu) serves up to 2 or more camera(s) at 4 FPS within 1000 ms on pytorch." in result.output
    assert "From no bench file and this machine's capacity search" in result.output
    assert "Recommended: pytorch (pipeline)" in result.output


def test_the_search_leaves_out_what_parity_flagged_and_adds_its_runs_to_the_bench_file(tmp_path, small_config):
    bench = load_report(saturated_bench(tmp_path / "bench.json", small_config))
    config, plan, need = load_config(small_config), CameraPlan((120, 160), seconds=0.5), Need(1, 4.0, 1000.0)
    bench.parity = [ParityResult("pytorch", "fp32", "ok", flagged=True)]
    flagged = search_capacity(config, need, plan, "pytorch", tmp_path, limit=1, bench=bench)
    assert flagged.results == [] and flagged.best is None and flagged.report is bench
    bench.parity = []
    searched = search_capacity(config, need, plan, "pytorch", tmp_path, limit=1, bench=bench)
    assert searched.best.backend == "pytorch" and searched.report is bench
    (pytorch,) = bench.backends
    assert [(run.load, run.cameras) for run in pytorch.multi_stream] == [("closed", 16), ("open", 1)]


def test_merging_adds_each_backends_runs_and_the_backends_a_report_lacks():
    def report(*backends):
        return BenchReport("2026-11-25T00:00:00+00:00", {}, {}, {}, list(backends))

    closed = StreamResult("pipeline", 4, 10, 1.0, 10.0, LatencySummary.from_samples([0.01]))
    opened = StreamResult("pipeline", 2, 10, 1.0, 10.0, LatencySummary.from_samples([0.02]), load="open")
    bench = report(BackendResult("pytorch", "ok", multi_stream=[closed]))
    searched = report(
        BackendResult("pytorch", "ok", multi_stream=[opened]),
        BackendResult("onnxruntime", "ok", multi_stream=[opened]),
        BackendResult("tensorrt", "unavailable", "not here"),  # no runs: not added
    )
    assert bench.merge(searched) is bench
    assert [(b.name, b.multi_stream) for b in bench.backends] == [
        ("pytorch", [closed, opened]),
        ("onnxruntime", [opened]),
    ]


def saturated_bench(path, config_path, name="pytorch", mode="pipeline", cameras=16, fps=5000.0, p99_ms=5.0):
    """A bench record from a (much faster) machine: saturation at ``fps`` with ``cameras`` cameras."""
    summary = LatencySummary(100, p99_ms / 2, 1.0, p99_ms, 1.0, p99_ms / 2, p99_ms, p99_ms, 2000 / p99_ms)
    stream = StreamResult(mode, cameras, 100, 100 / fps, fps, summary, {8: 12})
    report = BenchReport(
        "2026-11-25T00:00:00+00:00",
        {"gpu": {"name": "NVIDIA H100 80GB HBM3"}},
        {"max_batch": 8},
        to_dict(load_config(config_path)),
        [BackendResult(name, "ok", runner={"precision": "fp32"}, multi_stream=[stream])],
    )
    path.write_text(json.dumps(report.to_dict()))
    return path


@pytest.mark.parametrize(("cameras", "fps", "code", "verdict"), [(1, 4, 0, "PASS"), (8, 200, 1, "FAIL")])
def test_verify_passes_and_fails_on_the_two_sides_of_this_machines_capacity(
    tmp_path, small_config, cameras, fps, code, verdict
):
    """The bench says the backend meets the need; deploy.sh's detect on this CPU then serves 1 camera at 4 FPS but
    not 8 at 200 FPS."""
    bench = saturated_bench(tmp_path / "bench.json", small_config)
    result = invoke("recommend", "--bench", bench, "--cameras", cameras, "--fps", fps, "--verify", "--seconds", 1,
                    "--resolution", "120x160")  # fmt: skip
    assert result.exit_code == code, result.output
    assert "Recommended: pytorch (pipeline)" in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert line.startswith(f"{verdict}: pytorch (detect's pipeline, outputs on) served {cameras} camera(s) at {fps} "
                           f"FPS on this machine ({cameras} generated 120x160 clip(s) at {fps} FPS")  # fmt: skip
    assert "P99" in line and "busiest: " in line and "detection load: " in line
    assert "new noise in every frame: costlier to decode than a fixed camera's; --sources plays yours" in line
    late, dropped = (int(line.split(f" {word}")[0].rsplit(" ", 1)[1]) for word in ("late", "dropped"))
    assert (late, dropped) == (0, 0) if verdict == "PASS" else dropped > 0


def test_verify_fails_where_the_pipeline_not_the_detector_is_the_limit(tmp_path, small_config):
    """One 1080p camera at 120 FPS: the small model at 64x64 would keep up, but its reader cannot decode that fast. A
    check of the detector alone passes; deploy.sh's pipeline does not, and the verdict shows the reader's share."""
    bench = saturated_bench(tmp_path / "bench.json", small_config)
    result = invoke("recommend", "--bench", bench, "--cameras", 1, "--fps", 120, "--latency-ms", 1000, "--verify",
                    "--seconds", 0.25, "--resolution", "1080x1920", "--test-size", "64x64",
                    "--conf", "0.5")  # fmt: skip
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith(("PASS", "FAIL"))]
    readers = float(line.split("(readers ")[1].split("%")[0])
    # What is verified is what is deployed: the reader decoding 1080p frames is part of it (it was busy for a good
    # share of the run even on a loaded machine), and the camera could not be served at its rate.
    assert line.startswith("FAIL") and readers >= 25, line


def test_verify_without_a_choice_fails(tmp_path, small_config):
    bench = saturated_bench(tmp_path / "bench.json", small_config, fps=10.0)
    result = invoke("recommend", "--bench", bench, "--cameras", 8, "--fps", 30, "--verify")
    assert result.exit_code == 1 and "FAIL: no backend was chosen" in result.output


def test_recommend_answers_from_open_loop_runs_and_says_what_this_machine_serves(tmp_path, small_config):
    output = tmp_path / "bench.json"
    result = invoke(
        "bench",
        "-b",
        "pytorch",
        "--iters",
        2,
        "--warmup",
        0,
        "--cameras",
        "1,2",
        "--fps",
        4,
        "--seconds",
        1,
        "--latency-ms",
        1000,
        "-c",
        small_config,
        "-o",
        output,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "Open Loop Results" in result.output and "Multi-Stream Results" not in result.output  # --fps: open loop only
    report = load_report(output)
    assert report.schema_version == 2 and report.settings["fps"] == 4.0
    assert [(s.load, s.cameras) for s in report.backends[0].multi_stream] == [("open", 1), ("open", 2)]

    rec = invoke("recommend", "--bench", output, "--cameras", 2, "--fps", 4, "--latency-ms", 1000)
    assert "Recommended: pytorch (pipeline)" in rec.output and "open loop, measured at 2 cameras x 4 FPS" in rec.output
    more = invoke("recommend", "--bench", output, "--cameras", 3, "--fps", 4, "--latency-ms", 1000)
    assert "No backend measured here meets the need" in more.output  # measured at 1 and 2 cameras only
    assert (
        "This machine serves up to 2 camera(s) at 4 FPS within 1000 ms on pytorch (measured open loop)" in more.output
    )
    other_rate = invoke("recommend", "--bench", output, "--cameras", 2, "--fps", 30)
    assert "not measured" in other_rate.output and "no run at 30 FPS" in other_rate.output


def test_nothing_meets_says_what_this_machine_serves_estimated_from_saturation(tmp_path, small_config):
    bench = saturated_bench(tmp_path / "bench.json", small_config, fps=300.0)
    result = invoke("recommend", "--bench", bench, "--cameras", 16, "--fps", 30)
    assert "No backend measured here meets the need" in result.output
    assert "serves about 8 camera(s) at 30 FPS on pytorch: ESTIMATED from its saturated throughput" in result.output


def test_deploy_writes_a_config_that_loads_and_commands_that_run(tmp_path, small_config):
    bench = saturated_bench(tmp_path / "bench.json", small_config, name="triton", mode="concurrent")
    deploy = tmp_path / "deploy $(touch pwned) 'x'"  # a path with spaces and shell metacharacters
    result = invoke("recommend", "--bench", bench, "--cameras", 16, "--fps", 30, "--deploy", deploy)
    assert result.exit_code == 0, result.output
    assert "Recommended: triton (concurrent)" in result.output
    config = load_config(deploy / "config.yaml")  # what --config does
    triton = config.detection.triton
    assert config.detection.backend == "triton" and config.detection.model_type == "nano"
    assert (triton.max_batch_size, triton.preferred_batch_sizes) == (16, [1, 2, 4, 8, 16])

    script = (deploy / "deploy.sh").read_text()
    commands = [line for line in script.splitlines() if line.startswith("reidctl ")]
    setup, detect = commands
    assert detect == ('reidctl detect "$@" --backend triton -c "$DEPLOY_DIR/config.yaml" --realtime '
                      '--mot "$DEPLOY_DIR/runs/mot" --jsonl "$DEPLOY_DIR/runs/detections.jsonl"')  # what --verify runs
    # The script finds its config beside itself and takes the cameras as arguments; without any it says so.
    no_cameras = subprocess.run(["sh", str(deploy / "deploy.sh")], capture_output=True, text=True, cwd=tmp_path)
    assert no_cameras.returncode == 2 and "usage: sh deploy.sh CAMERA" in no_cameras.stderr
    assert not (tmp_path / "pwned").exists()
    args = shlex.split(setup.replace("$DEPLOY_DIR", str(deploy)), comments=True)[1:]
    assert args[-1] == "--start" and args[args.index("--max-batch-size") + 1] == "16"
    repository = tmp_path / "repository"
    written = invoke(*args[:-1], "--repository", repository)  # as emitted, without starting a server
    assert written.exit_code == 0, written.output
    pbtxt = (repository / "bytetrack_pytorch" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in pbtxt and "max_queue_delay_microseconds: 500" in pbtxt
    assert [int(line.split(":")[1]) for line in pbtxt.splitlines() if "preferred_batch_size" in line] == [
        1,
        2,
        4,
        8,
        16,
    ]
