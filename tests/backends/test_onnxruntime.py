"""The ONNX Runtime backend on real exports: same detections as PyTorch, batching limits, metadata fallbacks."""

import onnx
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from helpers import assert_same_detections, export, onnx_config, onnx_config_file
from reidctl.backends.onnxruntime import make_runner, session_providers
from reidctl.cli import app
from reidctl.core.detector import create_detector
from reidctl.core.registry import available_backends
from reidctl.errors import ReidctlError

runner = CliRunner()


def strip_metadata(source, target):
    model = onnx.load(str(source))
    del model.metadata_props[:]
    onnx.save(model, str(target))
    return target


def assert_same_rows(got, expected) -> None:
    """Equal as sets of (N, 7) rows within 1e-3: near-equal scores may be ordered differently."""
    assert_same_detections(got, expected, box_px=1e-3, score=1e-3)


def test_matches_pytorch_backend(nano_checkpoint, onnx_fp32, frames):
    config = onnx_config(onnx_fp32, nano_checkpoint)
    assert available_backends()["onnxruntime"] is None
    with create_detector(config, "onnxruntime") as ort_detector, create_detector(config, "pytorch") as torch_detector:
        info = ort_detector.runner.describe()
        assert info["providers"] == ["CPUExecutionProvider"] and info["precision"] == "fp32"
        assert ort_detector.runner.input_dtype == torch.float32 and ort_detector.runner.decoded
        total = 0
        for frame in frames:
            expected = torch_detector.detect(frame)
            assert_same_rows(ort_detector.detect(frame), expected)
            total += len(expected)
        assert total > len(frames)  # the comparison covered real detections
        batched = ort_detector.detect_batch(frames[:5])
        for frame, got in zip(frames[:5], batched):
            assert_same_rows(got, torch_detector.detect(frame))


def test_fp16_graph_finds_the_same_confident_people(tmp_path, nano_checkpoint, frames):
    path = export(nano_checkpoint, tmp_path / "fp16.onnx", fp16=True).path
    config = onnx_config(path, nano_checkpoint)
    with create_detector(config, "onnxruntime") as half, create_detector(config, "pytorch") as full:
        assert half.runner.input_dtype == torch.float16
        for frame in frames[:4]:
            expected, got = full.detect(frame), half.detect(frame)
            confident = expected[expected[:, 4] * expected[:, 5] > 0.5]
            assert len(confident) > 0
            iou = torchvision.ops.box_iou(torch.from_numpy(confident[:, :4]), torch.from_numpy(got[:, :4]))
            assert (iou.max(dim=1).values > 0.9).all()


def test_fixed_batch_graph_takes_any_number_of_frames(tmp_path, nano_checkpoint, onnx_fp32, frames):
    fixed = export(nano_checkpoint, tmp_path / "b2.onnx", dynamic_batch=False, batch=2).path
    with create_detector(onnx_config(fixed), "onnxruntime") as detector, \
            create_detector(onnx_config(onnx_fp32), "onnxruntime") as reference:
        assert detector.runner.describe()["batch"] == 2
        for count in (1, 3, 4):
            for got, expected in zip(detector.detect_batch(frames[:count]), reference.detect_batch(frames[:count]),
                                     strict=True):
                assert_same_rows(got, expected)


def test_file_without_metadata_falls_back_with_one_warning(tmp_path, nano_checkpoint, onnx_fp32, frames):
    # ByteTrack's own export: raw head output, no reidctl metadata.
    raw = strip_metadata(export(nano_checkpoint, tmp_path / "raw.onnx", decode=False).path, tmp_path / "bt.onnx")
    warnings = []
    detector_runner = make_runner(onnx_config(raw), warn=warnings.append)
    assert len(warnings) == 1 and "has no reidctl metadata" in warnings[0] and "raw" in warnings[0]
    assert detector_runner.decoded is False

    # A decoded export without metadata needs detection.decoded: true.
    decoded = strip_metadata(onnx_fp32, tmp_path / "decoded.onnx")
    with create_detector(onnx_config(onnx_fp32), "onnxruntime") as reference, \
            create_detector(onnx_config(raw), "onnxruntime") as bytetrack_style, \
            create_detector(onnx_config(decoded, decoded=True), "onnxruntime") as configured:
        for frame in frames[:3]:
            expected = reference.detect(frame)
            assert_same_rows(bytetrack_style.detect(frame), expected)
            assert_same_rows(configured.detect(frame), expected)

    # Metadata wins over a contradicting config value, with a warning.
    warnings.clear()
    assert make_runner(onnx_config(onnx_fp32, decoded=False), warn=warnings.append).decoded is True
    assert len(warnings) == 1 and "using the file's metadata" in warnings[0]


def test_bad_files_and_settings(tmp_path, onnx_fp32):
    with pytest.raises(ReidctlError, match=r"ONNX model not found: .*missing.onnx \(create it with `reidctl export"):
        make_runner(onnx_config(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_fp32.read_bytes()[:5000])
    with pytest.raises(ReidctlError, match="is not a readable ONNX model|is not a YOLOX detector"):
        make_runner(onnx_config(corrupt))
    assert session_providers("cpu") == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        with pytest.raises(ReidctlError, match="no CUDA GPU"):
            session_providers("cuda")


def test_detect_cli_on_onnxruntime(tmp_path, onnx_fp32, video_file):
    config = onnx_config_file(tmp_path / "config.yaml", onnx_fp32)
    out = tmp_path / "d.txt"
    result = runner.invoke(app, ["detect", str(video_file), "-c", str(config), "-b", "onnxruntime", "--mot", str(out),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) > 12

    missing = onnx_config_file(tmp_path / "missing.yaml", tmp_path / "nope.onnx")
    result = runner.invoke(app, ["detect", str(video_file), "-c", str(missing), "-b", "onnxruntime", "--mot",
                                 str(tmp_path / "x.txt"), "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ONNX model not found")
    assert "reidctl export-onnx" in result.output
    assert not (tmp_path / "x.txt").exists()
