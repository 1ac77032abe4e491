"""`reidctl recommend` on crafted bench results (every branch) and on the reference decision tree."""

import json
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from helpers import project_env
from reidctl.cli import app
from reidctl.config import Config, to_dict
from reidctl.apps.bench_report import BackendResult, BenchReport, StreamResult
from reidctl.apps.recommend import Need, recommend
from reidctl.apps.stats import LatencySummary

runner = CliRunner()
ALL_HERE = {"pytorch": None, "onnxruntime": None, "tensorrt": None, "triton": None}
NO_TENSORRT = ALL_HERE | {"tensorrt": "TensorRT is not installed"}


def latency(p99_ms: float) -> LatencySummary:
    avg = p99_ms * 0.8
    return LatencySummary(100, avg, avg * 0.5, p99_ms * 1.1, 1.0, avg, p99_ms * 0.95, p99_ms, 1000 / avg)


def backend(name: str, *runs: tuple[str, int, float, float]) -> BackendResult:
    """``runs``: (mode, cameras, total FPS, P99 ms)."""
    streams = [StreamResult(mode, cams, 100, 100 / fps, fps, latency(p99)) for mode, cams, fps, p99 in runs]
    return BackendResult(name, "ok", runner={"device": "cuda:0"}, single_stream=latency(10), multi_stream=streams)


def write_bench(path, *backends: BackendResult, version: int = 1, settings: dict | None = None):
    report = BenchReport(
        created="2026-11-25T00:00:00+00:00",
        environment={"gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}},
        settings={"max_batch": 8} if settings is None else settings,
        config=to_dict(Config()),
        backends=list(backends),
        schema_version=version,
    )
    path.write_text(json.dumps(report.to_dict()))
    return path


def verdicts(rec) -> dict:
    return {v.backend: v for v in rec.verdicts}


def test_simplest_backend_that_meets_wins_over_faster_ones(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 4, 150.0, 40.0)),
        backend("onnxruntime", ("sequential", 4, 400.0, 12.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.measured and rec.choice == "pytorch" and rec.mode == "sequential"
    assert verdicts(rec)["onnxruntime"].meets  # faster, but not simpler
    assert verdicts(rec)["tensorrt"].verdict == "not measured"
    snippet = yaml.safe_load(rec.config_snippet)["detection"]
    assert snippet["backend"] == "pytorch" and snippet["test_size"] == [640, 640] and "fuse" in snippet
    assert any("150.0 FPS for 120.0 needed" in line for line in rec.reasoning)
    assert any(line.startswith("Also meets: onnxruntime") for line in rec.reasoning)


@pytest.mark.parametrize(
    ("pytorch_fps", "onnxruntime_fps", "choice", "line"),
    [
        (130.0, 400.0, "onnxruntime", "Passed over: pytorch"),  # 8% above the need: 93% load; the other has room
        (125.0, 130.0, "pytorch", "none has 1.2x throughput headroom"),  # no one has room: the simplest, with a warning
    ],
)
def test_headroom_decides_between_backends_that_meet_the_need(tmp_path, pytorch_fps, onnxruntime_fps, choice, line):
    """Bench measures saturated throughput, so a choice should keep 1.2x of the need."""
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 4, pytorch_fps, 40.0)),
        backend("onnxruntime", ("sequential", 4, onnxruntime_fps, 12.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == choice and verdicts(rec)["pytorch"].meets and verdicts(rec)["onnxruntime"].meets
    assert any(line in reason for reason in rec.reasoning), rec.reasoning


def test_throughput_short_of_cameras_times_fps_is_rejected(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 4, 100.0, 40.0), ("pipeline", 4, 110.0, 45.0)),
        backend("triton", ("concurrent", 4, 250.0, 35.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "triton" and rec.mode == "concurrent"
    pytorch = verdicts(rec)["pytorch"]
    assert not pytorch.meets and (pytorch.verdict, pytorch.detail) == (
        "too slow",
        "110.0 of 120.0 FPS",
    )  # its best mode
    triton = yaml.safe_load(rec.config_snippet)["detection"]["triton"]
    assert triton["max_batch_size"] == 8 and triton["preferred_batch_sizes"] == [1, 2, 4, 8]
    assert triton["max_queue_delay_ms"] == 0.5


def test_p99_over_budget_is_rejected_and_the_pipeline_mode_can_carry_a_backend(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 4, 150.0, 180.0), ("pipeline", 4, 160.0, 60.0)),
        backend("onnxruntime", ("sequential", 4, 200.0, 150.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch" and rec.mode == "pipeline"
    assert rec.config_snippet.splitlines()[1] == ("# measured in process (batches of at most 8 frames: detect "
                                                  "--max-batch 8): the cameras are served by `reidctl detect`")
    assert (verdicts(rec)["onnxruntime"].verdict, verdicts(rec)["onnxruntime"].detail) == (
        "P99 over budget",
        "P99 150.0 ms > 100 ms",
    )
    # bench's default max batch is detect's: nothing to add to detect's command line
    default = write_bench(tmp_path / "d.json", backend("pytorch", ("pipeline", 4, 160.0, 60.0)),
                          settings={"max_batch": None})
    note = recommend(Need(4, 30, 100), default, {}, ALL_HERE).config_snippet.splitlines()[1]
    assert note == "# measured in process: the cameras are served by `reidctl detect`"


def test_bench_files_from_before_the_pipeline_mode_are_still_read(tmp_path):
    """Their in-process mode was "batched" (bench's micro-batcher) and their settings hold its max_delay_ms."""
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("sequential", 4, 100.0, 80.0),
                                                     ("batched", 4, 160.0, 60.0)),
                        version=2, settings={"max_batch": 8, "max_delay_ms": 2.0})  # fmt: skip
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch" and rec.mode == "batched"
    assert "the cameras are served by `reidctl detect`" in rec.config_snippet and "delay" not in rec.config_snippet


def test_backend_not_installed_here_is_not_recommended(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 2, 45.0, 90.0)),
        backend("tensorrt", ("sequential", 2, 90.0, 30.0)),
    )
    rec = recommend(Need(2, 30, 100), bench, {}, NO_TENSORRT)
    assert rec.choice is None and rec.config_snippet is None
    tensorrt = verdicts(rec)["tensorrt"]
    assert (tensorrt.verdict, tensorrt.detail) == ("unavailable here", "TensorRT is not installed")
    assert "tensorrt: unavailable here (TensorRT is not installed)." in rec.reasoning
    assert any("No backend measured here meets the need" in line for line in rec.reasoning)
    assert any(line.startswith("Closest: pytorch") for line in rec.reasoning)
    # The same measurements where TensorRT is installed.
    assert recommend(Need(2, 30, 100), bench, {}, ALL_HERE).choice == "tensorrt"


def test_failed_and_unavailable_results_are_reported(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 1, 50.0, 25.0)),
        BackendResult("onnxruntime", "failed", "ONNX model not found: models/x.onnx"),
        BackendResult("triton", "unavailable", "Triton server at localhost:8101 is not reachable"),
    )
    rec = recommend(Need(1, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch"
    onnxruntime, triton = verdicts(rec)["onnxruntime"], verdicts(rec)["triton"]
    assert (onnxruntime.verdict, onnxruntime.detail) == ("failed", "ONNX model not found: models/x.onnx")
    assert triton.verdict == "unavailable" and triton.detail.startswith("Triton server")


def test_nearest_measured_count_at_or_above_and_extrapolation(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend(
            "triton", ("concurrent", 1, 40.0, 20.0), ("concurrent", 4, 150.0, 40.0), ("concurrent", 16, 400.0, 60.0)
        ),
    )
    at_five = verdicts(recommend(Need(5, 10, 100), bench, {}, ALL_HERE))["triton"].estimate
    assert (at_five.measured_cameras, at_five.extrapolated, at_five.throughput_fps) == (16, False, 400.0)
    assert verdicts(recommend(Need(4, 10, 100), bench, {}, ALL_HERE))["triton"].estimate.measured_cameras == 4

    rec = recommend(Need(32, 10, 150), bench, {}, ALL_HERE)
    estimate = verdicts(rec)["triton"].estimate
    assert estimate.extrapolated and estimate.measured_cameras == 16
    assert estimate.throughput_fps == 400.0 and estimate.p99_ms == pytest.approx(120.0)  # 60 ms x 32 / 16
    assert rec.choice == "triton"
    assert any("extrapolated from 16" in line for line in rec.reasoning)
    assert any("rerun `reidctl bench --cameras 32`" in line for line in rec.reasoning)
    assert yaml.safe_load(rec.config_snippet)["detection"]["triton"]["max_batch_size"] == 32
    # Extrapolated past the budget: 60 ms x 64 / 16 = 240 ms.
    assert verdicts(recommend(Need(64, 1, 150), bench, {}, ALL_HERE))["triton"].detail == "P99 240.0 ms > 150 ms"


@pytest.mark.parametrize(
    ("cameras", "fps", "latency_ms", "scenario", "pick"),
    [
        (1, 10, 100, "Single camera (< 20 FPS)", "pytorch"),
        (1, 25, 100, "Single camera (20-30 FPS)", "tensorrt"),
        (3, 15, 100, "2-3 cameras", "tensorrt"),
        (4, 30, 100, "4+ cameras", "triton"),
        (1, 10, 20, "Low latency required", "triton"),
    ],
)
def test_decision_tree_without_measurements(cameras, fps, latency_ms, scenario, pick):
    rec = recommend(Need(cameras, fps, latency_ms), None, to_dict(Config()), ALL_HERE)
    assert not rec.measured and rec.scenario == scenario and rec.choice == pick
    assert rec.reasoning[0].startswith("NOT MEASURED")
    assert yaml.safe_load(rec.config_snippet)["detection"]["backend"] == pick


def test_decision_tree_falls_back_to_a_simpler_backend_that_is_installed():
    rec = recommend(Need(2, 30, 100), None, to_dict(Config()), NO_TENSORRT)
    assert rec.scenario == "2-3 cameras" and rec.choice == "onnxruntime"
    assert any("tensorrt cannot run here (TensorRT is not installed)" in line for line in rec.reasoning)
    rec = recommend(
        Need(2, 30, 100), None, to_dict(Config()), {"pytorch": None, "tensorrt": "TensorRT is not installed"}
    )
    assert rec.choice == "pytorch"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_with_bench_file_and_json(tmp_path):
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("sequential", 2, 70.0, 50.0)))
    out = tmp_path / "rec" / "recommendation.json"
    result = invoke("recommend", "--cameras", 2, "--fps", 30, "--bench", bench, "--json", out)
    assert result.exit_code == 0, result.output
    assert "Recommended: pytorch" in result.output and "70.0 FPS for 60.0 needed" in result.output
    data = json.loads(out.read_text())
    assert data["measured"] and data["choice"] == "pytorch" and data["need"]["total_fps"] == 60
    assert {v["backend"] for v in data["verdicts"]} >= {"pytorch", "tensorrt"}  # every backend, measured or not


def test_outputs_never_write_over_each_other_or_an_input(tmp_path):
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("pipeline", 4, 400.0, 20.0)))
    before = bench.read_text()
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    cases = [
        (("--json", bench), f"--json would write over --bench ({bench})"),
        (("--json", deploy / "config.yaml", "--deploy", deploy),
         f"--json and --deploy both write {deploy}/config.yaml"),
        (("--deploy", tmp_path, "--json", tmp_path / "r.json"), "holds other files (b.json and 1 more)"),
    ]
    for args, message in cases:
        result = invoke("recommend", "--cameras", 4, "--bench", bench, *args)
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert bench.read_text() == before and not list(deploy.iterdir()) and not (tmp_path / "r.json").exists()
    # A folder holding a previous deploy only is rewritten; one holding anything else is left alone.
    for _ in range(2):
        assert invoke("recommend", "--cameras", 4, "--bench", bench, "--deploy", deploy).exit_code == 0
    assert sorted(p.name for p in deploy.iterdir()) == ["config.yaml", "deploy.sh"]
    (deploy / "runs").mkdir()  # what its deploy.sh writes there
    assert invoke("recommend", "--cameras", 4, "--bench", bench, "--deploy", deploy).exit_code == 0
    (deploy / "notes.txt").write_text("mine")
    result = invoke("recommend", "--cameras", 4, "--bench", bench, "--deploy", deploy)
    assert result.exit_code == 2 and f"--deploy {deploy} holds other files (notes.txt)" in result.output


def test_tables_in_a_pipe_keep_every_number_and_name_whole(tmp_path):
    """Rich assumes 80 columns where stdout is no terminal and cut cells ('165.…', 'Camer…'): a log keeps them."""
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("pipeline", 16, 123456789.125, 98765.4321)))
    command = [sys.executable, "-m", "reidctl", "recommend", "--cameras", "16", "--bench", str(bench)]
    env = project_env()
    env.pop("COLUMNS", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)  # stdout: a pipe
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ pytorch"))
    assert "16 cam, saturation" in row and "123456789.1 >= 480.0" in row and "98765.4 > 100" in row, row
    assert "…" not in result.stdout


def test_cli_finds_the_last_bench_result_or_says_it_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("recommend", "--cameras", 1, "--fps", 10)
    assert result.exit_code == 0, result.output
    assert "NOT MEASURED" in result.output and "Reference guide summary" in result.output
    (tmp_path / "runs" / "bench").mkdir(parents=True)
    write_bench(tmp_path / "runs" / "bench" / "bench.json", backend("pytorch", ("sequential", 1, 30.0, 40.0)))
    result = invoke("recommend", "--cameras", 1, "--fps", 10)
    assert result.exit_code == 0, result.output
    assert "NOT MEASURED" not in result.output and "runs/bench/bench.json" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema_version": 99, "backends": []}), "has schema_version 99"),
        (json.dumps({"schema_version": 1, "backends": [{"name": "x"}]}), "is malformed"),
    ],
)
def test_cli_rejects_bad_bench_files(tmp_path, content, message):
    bench = tmp_path / "b.json"
    bench.write_text(content)
    result = invoke("recommend", "--bench", bench)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_bench_file_too_large_to_be_one_is_refused_before_it_is_read(tmp_path):
    bench = tmp_path / "b.json"
    with bench.open("wb") as handle:
        handle.truncate(300 << 20)  # sparse: its size without the disk or the time to write it
    start = time.perf_counter()
    result = invoke("recommend", "--bench", bench)
    assert time.perf_counter() - start < 5
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert f"bench file {bench} is {300 << 20} bytes; a bench file is at most {64 << 20} bytes" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bench", "no/such.json"), "bench file not found"),
        (("--cameras", 0), "--cameras must be"),
        (("--fps", 0), "--fps must be"),
        (("--fps", "nan"), "--fps must be a positive finite number, got nan"),
        (("--fps", "inf"), "--fps must be a positive finite number, got inf"),
        (("--latency-ms", "nan"), "--latency-ms must be a positive finite number, got nan"),
        (("--latency-ms", -5), "--latency-ms must be"),
    ],
)
def test_cli_rejects_bad_needs(tmp_path, args, message):
    result = invoke("recommend", *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def open_run(name_mode: str, cameras: int, fps: float, p99_ms: float, dropped: int = 0) -> StreamResult:
    """An open-loop run of ``cameras`` at ``fps`` each."""
    return StreamResult(
        name_mode,
        cameras,
        100,
        3.0,
        cameras * fps - dropped / 3,
        latency(p99_ms),
        load="open",
        fps_per_camera=fps,
        latency_budget_ms=100.0,
        dropped=dropped,
        late=0,
    )


def test_open_loop_runs_answer_before_saturation(tmp_path):
    """Saturation says pytorch is fast enough; at camera rate its P99 is over budget at 8 cameras: triton is chosen."""
    pytorch = backend("pytorch", ("pipeline", 8, 400.0, 40.0))
    pytorch.multi_stream.append(open_run("pipeline", 8, 30, 140.0))
    triton = backend("triton", ("concurrent", 8, 300.0, 60.0))
    triton.multi_stream += [open_run("concurrent", 16, 30, 80.0)]
    bench = write_bench(tmp_path / "b.json", pytorch, triton, version=2)
    rec = recommend(Need(8, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "triton" and verdicts(rec)["pytorch"].verdict == "P99 over budget"
    chosen = verdicts(rec)["triton"].estimate
    assert (chosen.load, chosen.measured_cameras) == ("open", 16)  # a pass with more cameras answers for fewer
    assert any("measured at camera rate" in line for line in rec.reasoning)
    # At 10 FPS per camera no open-loop run answers: saturation does, with its headroom rule.
    assert verdicts(recommend(Need(8, 10, 100), bench, {}, ALL_HERE))["pytorch"].estimate.load == "closed"


def test_dropped_frames_fail_an_open_loop_run(tmp_path):
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("pipeline", 4, 400.0, 20.0)), version=2)
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch"
    dropping = backend("pytorch", ("pipeline", 4, 400.0, 20.0))
    dropping.multi_stream.append(open_run("pipeline", 2, 30, 20.0, dropped=3))  # fails with fewer: fails with 4
    rec = recommend(Need(4, 30, 100), write_bench(tmp_path / "d.json", dropping, version=2), {}, ALL_HERE)
    assert rec.choice is None and verdicts(rec)["pytorch"].verdict == "drops frames"


def test_a_backend_whose_detections_diverge_is_never_chosen(tmp_path):
    from reidctl.apps.bench_report import ParityResult

    pytorch = backend("pytorch", ("pipeline", 4, 400.0, 20.0))
    pytorch.runner["precision"] = "fp16"
    bench = write_bench(tmp_path / "b.json", pytorch, backend("triton", ("concurrent", 4, 400.0, 20.0)), version=2)
    data = json.loads(bench.read_text())
    diverged = ParityResult(
        "pytorch",
        "fp16",
        "ok",
        frames=8,
        reference_boxes=40,
        matched=30,
        missed=10,
        extra=4,
        max_score_diff=0.3,
        flagged=True,
    )
    data["parity"] = [diverged.to_dict()]
    bench.write_text(json.dumps(data))
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "triton" and verdicts(rec)["pytorch"].verdict == "detections diverge"
    assert "10 missed and 4 extra of 40 boxes" in verdicts(rec)["pytorch"].detail
    data["parity"][0]["precision"] = "fp32"  # flagged at a precision the bench did not run at: no bearing
    bench.write_text(json.dumps(data))
    assert recommend(Need(4, 30, 100), bench, {}, ALL_HERE).choice == "pytorch"


def test_bench_files_of_schema_version_1_are_still_read(tmp_path):
    bench = write_bench(tmp_path / "b.json", backend("pytorch", ("sequential", 2, 70.0, 50.0)), version=1)
    data = json.loads(bench.read_text())
    del data["parity"]
    for stream in data["backends"][0]["multi_stream"]:
        for key in ("load", "fps_per_camera", "latency_budget_ms", "jitter", "dropped", "late", "per_camera"):
            del stream[key]
    bench.write_text(json.dumps(data))
    rec = recommend(Need(2, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch" and verdicts(rec)["pytorch"].estimate.load == "closed"


@pytest.mark.parametrize("section", ["detection", "tensorrt"])  # tensorrt: a record of the key before the move
def test_onnxruntime_snippet_keeps_the_onnx_path(tmp_path, section):
    config = to_dict(Config())
    (config["detection"] if section == "detection" else config["detection"]["tensorrt"])["onnx_path"] = "models/x.onnx"
    bench = write_bench(tmp_path / "b.json", backend("onnxruntime", ("sequential", 1, 70.0, 20.0)))
    data = json.loads(bench.read_text())
    data["config"] = config
    bench.write_text(json.dumps(data))
    rec = recommend(Need(1, 30, 100), bench, {}, ALL_HERE)
    snippet = yaml.safe_load(rec.config_snippet)["detection"]
    assert snippet["onnx_path"] == "models/x.onnx" and "onnx_path" not in snippet["tensorrt"]
