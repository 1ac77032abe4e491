"""Shared by the export, ONNX Runtime and TensorRT tests: a numerically well-behaved YOLOX-nano, ONNX exports of
it, configs pointing at them and video frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from conftest import SMALL_TEST_SIZE, make_checkpoint, write_config
from reidctl.config import Config, DetectionConfig, TensorRTConfig
from reidctl.export.onnx import export_onnx
from reidctl.models.checkpoint import load_model

TEST_SIZE = SMALL_TEST_SIZE


def export(checkpoint: Path, output: Path, **options):
    model, spec = load_model(checkpoint, "nano")
    return export_onnx(model, spec, output, TEST_SIZE, show_progress=False, **options)


def onnx_config(onnx_path: Path, checkpoint: Path | None = None, **tensorrt) -> Config:
    """In-memory config for the small model whose ONNX is ``onnx_path`` (CPU, test size 128x160)."""
    detection = DetectionConfig(model_path=str(checkpoint) if checkpoint else None, model_type="nano",
                                test_size=list(TEST_SIZE), device="cpu",
                                tensorrt=TensorRTConfig(onnx_path=str(onnx_path), **tensorrt))
    return Config(detection=detection)


def onnx_config_file(path: Path, onnx_path: Path, checkpoint: Path | None = None, **detection) -> Path:
    return write_config(path, checkpoint, tensorrt={"onnx_path": str(onnx_path)}, **detection)


def read_frames(video: Path) -> list:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="session")
def conditioned_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("conditioned") / "nano.pth.tar")


@pytest.fixture(scope="session")
def onnx_fp32(tmp_path_factory, conditioned_checkpoint) -> Path:
    """Dynamic-batch fp32 export with decoding in the graph (the default export)."""
    return export(conditioned_checkpoint, tmp_path_factory.mktemp("onnx") / "nano.onnx").path


@pytest.fixture(scope="session")
def frames(video_file) -> list:
    return read_frames(video_file)
