"""`reidctl recommend` on crafted bench results (every branch) and on the reference decision tree."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from reidctl.cli import app
from reidctl.config import Config, to_dict
from reidctl.engine.bench_report import BackendResult, BenchReport, StreamResult
from reidctl.engine.recommend import Need, recommend
from reidctl.engine.stats import LatencySummary

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


def write_bench(path, *backends: BackendResult, version: int = 1):
    report = BenchReport(
        created="2026-11-25T00:00:00+00:00",
        environment={"gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}},
        settings={"max_batch": 8, "max_delay_ms": 2.0},
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
        backend("pytorch", ("sequential", 4, 100.0, 40.0), ("batched", 4, 110.0, 45.0)),
        backend("triton", ("concurrent", 4, 250.0, 35.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "triton" and rec.mode == "concurrent"
    pytorch = verdicts(rec)["pytorch"]
    assert not pytorch.meets and (pytorch.verdict, pytorch.detail) == ("too slow", "110.0 of 120.0 FPS")  # its best mode
    triton = yaml.safe_load(rec.config_snippet)["detection"]["triton"]
    assert triton["max_batch_size"] == 8 and triton["preferred_batch_sizes"] == [1, 2, 4, 8]
    assert triton["max_queue_delay_ms"] == 0.5


def test_p99_over_budget_is_rejected_and_batched_mode_can_carry_a_backend(tmp_path):
    bench = write_bench(
        tmp_path / "b.json",
        backend("pytorch", ("sequential", 4, 150.0, 180.0), ("batched", 4, 160.0, 60.0)),
        backend("onnxruntime", ("sequential", 4, 200.0, 150.0)),
    )
    rec = recommend(Need(4, 30, 100), bench, {}, ALL_HERE)
    assert rec.choice == "pytorch" and rec.mode == "batched"
    assert "micro-batcher" in rec.config_snippet
    assert (verdicts(rec)["onnxruntime"].verdict, verdicts(rec)["onnxruntime"].detail) == ("P99 over budget", "P99 150.0 ms > 100 ms")


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
        backend("triton", ("concurrent", 1, 40.0, 20.0), ("concurrent", 4, 150.0, 40.0), ("concurrent", 16, 400.0, 60.0)),
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
    rec = recommend(Need(2, 30, 100), None, to_dict(Config()), {"pytorch": None, "tensorrt": "TensorRT is not installed"})
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
