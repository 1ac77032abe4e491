"""TensorRT: the pure parts (precision plan, profile, sidecar, compatibility check, log triage, timing-cache
reading, which context runs a batch, capture failures) everywhere, the CLI's errors without TensorRT, and real
engine builds and runs where TensorRT and a GPU exist."""

import enum
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import HAS_TENSORRT, export, needs_tensorrt, onnx_config, write_config
from reidctl.backends import tensorrt as trt_backend
from reidctl.cli import app
from reidctl.core.registry import available_backends
from reidctl.errors import BackendUnavailable, ReidctlError
from reidctl.export.onnx import read_onnx
from reidctl.export.tensorrt import (
    TENSORRT_INSTALL_HINT,
    BuildProgress,
    TensorRTLog,
    batch_profile,
    check_engine_compatibility,
    import_tensorrt,
    make_sidecar,
    plan_precision,
    read_sidecar,
    read_timing_cache,
    sidecar_path,
    tensorrt_unavailable_reason,
    torch_dtype,
)
from reidctl.io.atomic import write_text_atomic

runner = CliRunner()
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="checks the behaviour where TensorRT is not installed")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def platform(version="10.8.0", name="NVIDIA H100 80GB HBM3", cc="9.0"):
    return {"tensorrt_version": version, "gpu": {"name": name, "compute_capability": cc}}


def test_compatibility_check():
    built = platform()
    check_engine_compatibility(built, platform(), "e.trt")  # same TensorRT, same GPU model: runs
    other_gpu = r"e.trt was built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), this GPU is NVIDIA A10 " \
                r"\(compute capability 8.6\): rebuild the engine on this GPU"
    with pytest.raises(ReidctlError, match=other_gpu):
        check_engine_compatibility(built, platform(name="NVIDIA A10", cc="8.6"), "e.trt")
    with pytest.raises(ReidctlError, match=r"TensorRT 10.8.0, this machine has TensorRT 11.4.0: rebuild the engine"):
        check_engine_compatibility(built, platform(version="11.4.0"), "e.trt")
    # Another GPU model of the same architecture is refused too, as the README says: engines are tuned per model.
    same_architecture = r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), this GPU is NVIDIA H100 PCIe " \
                        r"\(compute capability 9.0\): rebuild the engine on this GPU"
    with pytest.raises(ReidctlError, match=same_architecture):
        check_engine_compatibility(built, platform(name="NVIDIA H100 PCIe"), "e.trt")
    with pytest.raises(ReidctlError, match="lacks the TensorRT version or GPU"):
        check_engine_compatibility({"tensorrt_version": "10.8.0"}, platform(), "e.trt")


def test_precision_plan_for_tensorrt_10_and_11():
    weakly_typed = plan_precision(10, True, "fp32")
    assert weakly_typed.precision == "fp16" and weakly_typed.fp16_flag and not weakly_typed.strongly_typed
    assert plan_precision(10, False, "fp32").precision == "fp32"
    for major in (10, 11):
        from_fp16_graph = plan_precision(major, True, "fp16")
        assert from_fp16_graph.precision == "fp16" and from_fp16_graph.strongly_typed and not from_fp16_graph.fp16_flag
        assert plan_precision(major, False, "fp16").precision == "fp16"  # the graph's types decide
    assert plan_precision(11, False, "fp32").strongly_typed
    with pytest.raises(ReidctlError, match=r"export with `reidctl export-onnx --fp16`"):
        plan_precision(11, True, "fp32")


def test_batch_profile():
    assert batch_profile(None, 1, 8, 16) == (1, 8, 16)
    assert batch_profile(4, 1, 8, 16) == (4, 4, 4)  # a fixed-batch graph fixes the profile
    for bad in [(0, 1, 2), (2, 1, 4), (1, 8, 4)]:
        with pytest.raises(ReidctlError, match="batch profile must satisfy"):
            batch_profile(None, *bad)


def test_sidecar_round_trip(tmp_path, onnx_fp32):
    info = read_onnx(onnx_fp32)
    sidecar = make_sidecar(
        tensorrt_version="10.8.0",
        gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        inputs=[{"name": "images", "shape": [-1, 3, 128, 160], "dtype": "float32"}],
        outputs=[{"name": "output", "shape": [-1, 420, 6], "dtype": "float32"}],
        profile=(1, 4, 8),
        precision="fp32",
        onnx=info,
        onnx_sha256="ab" * 32,
        workspace_mib=1024,
    )
    engine = tmp_path / "det.trt"
    assert sidecar_path(engine).name == "det.trt.json"
    assert read_sidecar(engine) is None
    write_text_atomic(sidecar_path(engine), json.dumps(sidecar))
    loaded = read_sidecar(engine)
    assert loaded == json.loads(json.dumps(sidecar))
    assert loaded["inputs"][0]["name"] == "images" and loaded["outputs"][0]["shape"] == [-1, 420, 6]
    assert loaded["profile"] == {"min_batch": 1, "opt_batch": 4, "max_batch": 8}
    assert loaded["metadata"]["decoded"] is True and loaded["metadata"]["input_size"] == [128, 160]
    assert loaded["onnx"]["sha256"] == "ab" * 32 and loaded["onnx"]["opset"] == 11
    check_engine_compatibility(loaded, platform(version="10.8.0"), engine)

    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ReidctlError, match="det.trt.json is not valid JSON: rebuild the engine"):
        read_sidecar(engine)


def test_tensorrt_tensor_types_map_to_torch_by_their_names():
    # tensorrt.DataType is an enum read by its members' names, so an enum of the same names stands for it here
    data_type = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "FP8"])
    assert [torch_dtype(t) for t in list(data_type)[:-1]] == [
        torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool,
    ]
    with pytest.raises(ReidctlError, match="^TensorRT tensor type FP8 is not supported$"):
        torch_dtype(data_type.FP8)


def test_build_engine_bar_keeps_the_build_and_lets_each_tensorrt_phase_go_once_over(capsys):
    from reidctl.cli.export import build_bar

    build = "TensorRT 10.9.0, fp16"
    with build_bar(True) as show:
        show(BuildProgress(build, None, 0, None))
        show(BuildProgress("Building engine", build, 0, 3))
        show(BuildProgress("Tactic search", "Building engine", 0, 40))
        show(BuildProgress("Tactic search", "Building engine", 40, 40, ended=True))
        show(BuildProgress("Building engine", build, 2, 3))
        show(BuildProgress("Serializing", "Building engine", 1, 5))
    build_line, building, serializing = capsys.readouterr().out.splitlines()  # the display as it ended
    assert f"build-engine {build} " in build_line and " 0/? " in build_line  # steps unknown until it ends
    assert "build-engine   Building engine " in building and " 2/3 " in building
    assert "build-engine     Serializing " in serializing and " 1/5 " in serializing  # within Building engine
    with build_bar(False) as show:
        assert show is None  # --no-progress: build_engine hears nothing


def test_tensorrt_log_keeps_errors_passes_warnings_once_and_drops_chatter():
    warnings = []
    log = TensorRTLog(warnings.append)
    assert log.last_error() == "no error message from TensorRT"
    log.add("VERBOSE", "Tactic 0x1 took 0.1 ms")
    log.add("INFO", "Detected 1 inputs and 1 output network tensors.")
    assert warnings == [] and log.errors == []
    for _ in range(3):
        log.add("WARNING", "Using an engine plan file across different models of devices is not recommended.\nmore")
    log.add("WARNING", "another warning")
    assert warnings == [
        "warning: TensorRT: Using an engine plan file across different models of devices is not recommended.",
        "warning: TensorRT: another warning",
    ]
    log.add("ERROR", "IExecutionContext::enqueueV3: Error Code 1: Cask (invalid)\nstack")
    log.add("INTERNAL_ERROR", "")
    assert log.errors == ["IExecutionContext::enqueueV3: Error Code 1: Cask (invalid)", "unknown error"]
    assert log.last_error() == "unknown error"


def test_timing_cache_reading(tmp_path):
    missing = tmp_path / "missing.cache"
    assert read_timing_cache(missing) == (b"", None)  # no file yet: a fresh cache, no warning
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x01\x02cache")
    assert read_timing_cache(cache) == (b"\x01\x02cache", None)
    unreadable = tmp_path / "a_directory.cache"
    unreadable.mkdir()
    data, warning = read_timing_cache(unreadable)
    assert data == b""
    assert warning.startswith(f"warning: timing cache {unreadable} cannot be used (")
    assert "building with a fresh cache" in warning


def test_each_captured_batch_size_gets_its_own_context():
    plan = trt_backend.ExecutionPlan(cuda_graphs=True)
    # bench's batched mode alternates batch sizes: never re-shape a context whose graph was captured
    keys = []
    for rows in (1, 4, 1, 4, 3):
        keys.append(plan.context_key(rows))
        if plan.needs_capture(rows):
            plan.mark_captured(rows)
    assert keys == [1, 4, 1, 4, 3] and plan.captured == {1, 3, 4}
    assert not plan.needs_capture(4)

    warning = plan.disable_graphs("operation not permitted when stream is capturing")
    assert warning == ("warning: CUDA graph capture of the TensorRT engine failed (operation not permitted when "
                       "stream is capturing); running without CUDA graphs")
    assert plan.disable_graphs("again") is None  # said once
    assert not plan.cuda_graphs and not plan.needs_capture(1)
    assert {plan.context_key(rows) for rows in (1, 4, 8)} == {trt_backend.SHARED_CONTEXT}

    plain = trt_backend.ExecutionPlan(cuda_graphs=False)
    assert {plain.context_key(rows) for rows in (1, 2, 16)} == {trt_backend.SHARED_CONTEXT}
    assert not plain.needs_capture(1) and plain.disable_graphs("x") is None


def test_capture_failure_reasons():
    assert trt_backend.capture_failure(True, None, "no error message from TensorRT") is None
    # execute_async_v3 returned False while capturing (what trtexec and Triton's backend fall back on)
    assert trt_backend.capture_failure(False, None, "Cask (not permitted)") == "Cask (not permitted)"
    assert trt_backend.capture_failure(True, "capture invalidated", "x") == "capture invalidated"


@needs_no_tensorrt
def test_unavailable_without_tensorrt(tmp_path, onnx_fp32, video_file):
    assert tensorrt_unavailable_reason() == TENSORRT_INSTALL_HINT
    assert "pip install 'reidctl[tensorrt]'" in TENSORRT_INSTALL_HINT
    assert available_backends()["tensorrt"] == TENSORRT_INSTALL_HINT
    config = write_config(tmp_path / "config.yaml", None, tensorrt={"engine_path": str(tmp_path / "e.trt")})
    result = invoke("detect", video_file, "-c", config, "-b", "tensorrt", "--no-progress", "--mot", tmp_path / "d.txt")
    assert "backend 'tensorrt' is unavailable: TensorRT is not installed" in error_line(result)

    engine = tmp_path / "engine.trt"
    result = invoke("build-engine", "--onnx", onnx_fp32, "-o", engine, "--no-progress", "-c", config)
    assert error_line(result).startswith("error: TensorRT is not installed (pip install 'reidctl")
    assert not engine.exists() and not sidecar_path(engine).exists()


def test_build_engine_bad_input(tmp_path, onnx_fp32):
    config = write_config(tmp_path / "config.yaml", None, tensorrt={"engine_path": str(tmp_path / "e.trt")})
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        ([], "ONNX model not found: " + str(tmp_path / "e.onnx")),  # follows the config: the engine path with .onnx
        (["--onnx", tmp_path / "missing.onnx"], "(create it with `reidctl export-onnx`)"),
        (["--onnx", corrupt], "is not"),
        (["--onnx", onnx_fp32, "--min-batch", "8", "--max-batch", "4"], "batch profile must satisfy"),
        (["--onnx", onnx_fp32, "-o", blocker / "e.trt"], "cannot create output directory"),
    ]
    for extra, message in cases:
        result = invoke("build-engine", "-c", config, "--no-progress", *extra)
        assert message in error_line(result), (extra, result.output)
    result = invoke("build-engine", "-c", config, "--workspace", "0", "--onnx", onnx_fp32)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not any(tmp_path.glob("*.trt*"))


def test_backend_errors_before_tensorrt_is_needed(tmp_path, onnx_fp32):
    config = onnx_config(onnx_fp32)
    config.detection.tensorrt.engine_path = str(tmp_path / "missing.trt")
    with pytest.raises(ReidctlError, match=r"engine not found: .*missing.trt \(build it with `reidctl build-engine`\)"):
        trt_backend.make_runner(config)
    engine = tmp_path / "e.trt"
    engine.write_bytes(b"engine")
    config.detection.tensorrt.engine_path = str(engine)
    with pytest.raises(BackendUnavailable, match="TensorRT runs only on a CUDA GPU, but detection.device is 'cpu'"):
        trt_backend.make_runner(config)


# --- Real TensorRT (needs_tensorrt): these run only where TensorRT is installed and a GPU is present. ---


@pytest.fixture()
def tensorrt_module():
    try:  # reidctl's own import: a wheel whose libnvinfer does not load (OSError) skips as well
        return import_tensorrt()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def gpu_config(onnx_path, engine_path, checkpoint=None, **tensorrt):
    config = onnx_config(onnx_path, checkpoint, engine_path=str(engine_path), **tensorrt)
    config.detection.device = "cuda"
    return config


def assert_close_detections(got, expected, box_atol):
    assert got.shape == expected.shape
    if len(expected):
        distance = np.abs(got[:, None, :4] - expected[None, :, :4]).max(axis=2)
        assert distance.min(axis=1).max() <= box_atol


@needs_tensorrt
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_build_and_detect(tmp_path, tensorrt_module, nano_checkpoint, frames, fp16):
    from reidctl.core.detector import create_detector
    from reidctl.export.tensorrt import build_engine

    onnx_path = export(nano_checkpoint, tmp_path / "m.onnx", fp16=fp16).path
    engine = tmp_path / "m.trt"
    cache = tmp_path / "timing.cache"
    reports = []
    result = build_engine(onnx_path, engine, fp16=fp16, workspace_mib=1024, min_batch=1, opt_batch=2, max_batch=4,
                          timing_cache=cache, on_progress=reports.append)
    build = reports[0]
    assert build.parent is None and build.phase.startswith(f"TensorRT {tensorrt_module.__version__}, ")
    assert reports[-1] == BuildProgress(build.phase, None, 1, 1, ended=True)
    phases = reports[1:-1]  # TensorRT's own, each ended once started
    assert phases and {r.phase for r in phases if r.done == 0} == {r.phase for r in phases if r.ended}
    sidecar = read_sidecar(engine)
    assert sidecar == result.sidecar and cache.is_file()
    assert sidecar["tensorrt_version"] == tensorrt_module.__version__
    assert sidecar["precision"] == ("fp16" if fp16 else "fp32") and sidecar["metadata"]["decoded"] is True
    assert sidecar["inputs"][0]["name"] == "images" and sidecar["profile"]["max_batch"] == 4

    config = gpu_config(onnx_path, engine, nano_checkpoint)
    with create_detector(config, "tensorrt") as trt_detector, create_detector(config, "onnxruntime") as reference:
        assert trt_detector.runner.input_dtype == (torch.float16 if fp16 else torch.float32)
        for count in (1, 3, 6):  # 6 > max batch 4: split
            for got, expected in zip(trt_detector.detect_batch(frames[:count]), reference.detect_batch(frames[:count])):
                assert_close_detections(got, expected, box_atol=2.0 if fp16 else 0.1)

    sidecar["gpu"]["compute_capability"] = "1.0"
    write_text_atomic(sidecar_path(engine), json.dumps(sidecar))
    with pytest.raises(ReidctlError, match="rebuild the engine on this GPU"):
        create_detector(config, "tensorrt")


@needs_tensorrt
def test_workspace_too_small_is_one_line_or_a_complete_engine(tmp_path, tensorrt_module, onnx_fp32):
    engine = tmp_path / "m.trt"
    config = write_config(tmp_path / "config.yaml", None)
    result = invoke("build-engine", "-c", config, "--onnx", onnx_fp32, "-o", engine, "--workspace", "1", "--fp32",
                    "--no-progress")
    if result.exit_code == 0:  # TensorRT may find kernels that fit in 1 MiB: then the engine and sidecar are whole
        assert engine.stat().st_size > 0 and read_sidecar(engine)["workspace_mib"] == 1
    else:
        assert "TensorRT could not build the engine" in error_line(result)
        assert not engine.exists() and not sidecar_path(engine).exists()


@needs_tensorrt
def test_foreign_timing_cache_is_a_warning_and_replaced(tmp_path, tensorrt_module, onnx_fp32):
    from reidctl.export.tensorrt import build_engine

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache of this TensorRT and GPU")
    warnings = []
    build_engine(onnx_fp32, tmp_path / "m.trt", fp16=False, workspace_mib=1024, min_batch=1, opt_batch=1,
                 max_batch=2, timing_cache=cache, warn=warnings.append)
    assert any(w.startswith(f"warning: timing cache {cache} cannot be used") for w in warnings)
    assert read_sidecar(tmp_path / "m.trt") is not None
    assert cache.read_bytes() != b"not a timing cache of this TensorRT and GPU"  # replaced by this GPU's timings
    warnings.clear()
    build_engine(onnx_fp32, tmp_path / "m2.trt", fp16=False, workspace_mib=1024, min_batch=1, opt_batch=1,
                 max_batch=2, timing_cache=cache, warn=warnings.append)
    assert not any("timing cache" in w for w in warnings)  # its own cache is taken back without complaint


@needs_tensorrt
def test_alternating_batch_sizes_replay_their_own_graphs(tmp_path, tensorrt_module, nano_checkpoint, frames):
    from reidctl.core.detector import create_detector
    from reidctl.export.tensorrt import build_engine

    onnx_path = export(nano_checkpoint, tmp_path / "m.onnx").path
    engine = tmp_path / "m.trt"
    build_engine(onnx_path, engine, fp16=False, workspace_mib=1024, min_batch=1, opt_batch=2, max_batch=4)
    config = gpu_config(onnx_path, engine, nano_checkpoint, cuda_graph=True)
    with create_detector(config, "tensorrt") as trt_detector, create_detector(config, "onnxruntime") as reference:
        for count in (1, 4, 1, 4, 2):
            for got, expected in zip(trt_detector.detect_batch(frames[:count]), reference.detect_batch(frames[:count])):
                assert_close_detections(got, expected, box_atol=0.1)
        runner = trt_detector.runner
        if runner.plan.cuda_graphs:  # captured: one context per batch size seen
            assert runner.plan.captured == {1, 2, 4} and set(runner._contexts) == {1, 2, 4}
