"""Shared by the export, ONNX Runtime and TensorRT tests: a numerically well-behaved YOLOX-nano, ONNX exports of
it, configs pointing at them and video frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
from torch import nn

from conftest import SMALL_TEST_SIZE, write_config
from reidctl.config import Config, DetectionConfig, TensorRTConfig
from reidctl.export.onnx import export_onnx, sample_input
from reidctl.models.checkpoint import load_model, save_checkpoint
from reidctl.models.yolox import build_yolox

TEST_SIZE = tuple(SMALL_TEST_SIZE)


def make_conditioned_checkpoint(path: Path, seed: int = 0) -> Path:
    """Untrained nano whose outputs depend on the input without being chaotic, like a trained model's.

    Plain random init lets activations vanish (every frame gives the same output, so backend comparisons
    prove little); BatchNorm statistics calibrated on real-range inputs with a BN gain of 0.25 keep them alive
    yet insensitive (input noise 1e-3 moves boxes ~0.4%), so fp16 can be checked against fp32 meaningfully.
    Head outputs are scaled to logits of std 1.5 (scores spread over (0, 1)) and box log-sizes of std 0.25.
    """
    torch.manual_seed(seed)
    model = build_yolox("nano", 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            nn.init.constant_(module.weight, 0.25)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(sample_input(4, TEST_SIZE, seed=100 + i))
        model.eval()
        head = model.head
        for level, features in enumerate(model.backbone(sample_input(2, TEST_SIZE, seed=7))):
            stem = head.stems[level](features)
            cls_features, reg_features = head.cls_convs[level](stem), head.reg_convs[level](stem)
            targets = ((head.cls_preds[level], cls_features, 1.5), (head.obj_preds[level], reg_features, 1.5),
                       (head.reg_preds[level], reg_features, 0.25))
            for pred, feats, std in targets:
                nn.init.zeros_(pred.bias)
                pred.weight.mul_(std / pred(feats).std())
    save_checkpoint(model, path)
    return path


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
    return make_conditioned_checkpoint(tmp_path_factory.mktemp("conditioned") / "nano.pth.tar")


@pytest.fixture(scope="session")
def onnx_fp32(tmp_path_factory, conditioned_checkpoint) -> Path:
    """Dynamic-batch fp32 export with decoding in the graph (the default export)."""
    return export(conditioned_checkpoint, tmp_path_factory.mktemp("onnx") / "nano.onnx").path


@pytest.fixture(scope="session")
def frames(video_file) -> list:
    return read_frames(video_file)
