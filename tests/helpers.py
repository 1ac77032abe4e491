"""Test helpers: small generated checkpoints in ByteTrack's format, configs, real video files, ONNX exports, ports."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import torch
import yaml
from torch import nn

from reidctl.config import Config, DetectionConfig, TensorRTConfig
from reidctl.export.onnx import export_onnx, sample_input
from reidctl.io.synthetic import write_synthetic_video
from reidctl.models.checkpoint import load_model, save_checkpoint
from reidctl.models.yolox import build_yolox

SMALL_TEST_SIZE = (128, 160)


def make_checkpoint(path: Path, size: str = "nano", num_classes: int = 1, seed: int = 0) -> Path:
    """An untrained YOLOX in ByteTrack's format ({"model": state_dict}) that behaves like a trained one numerically.

    Plain random init lets activations vanish (every frame gives the same output, so backend comparisons
    prove little); BatchNorm statistics calibrated on real-range inputs with a BN gain of 0.25 keep them alive
    yet insensitive (input noise 1e-3 moves boxes ~0.4%), so fp16 can be checked against fp32 meaningfully.
    Head outputs are scaled to logits of std 1.5 (scores spread over (0, 1), so frames give detections) and
    box log-sizes of std 0.25.
    """
    torch.manual_seed(seed)
    model = build_yolox(size, num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            nn.init.constant_(module.weight, 0.25)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(sample_input(4, SMALL_TEST_SIZE, seed=100 + i))
        model.eval()
        head = model.head
        for level, features in enumerate(model.backbone(sample_input(2, SMALL_TEST_SIZE, seed=7))):
            stem = head.stems[level](features)
            cls_features, reg_features = head.cls_convs[level](stem), head.reg_convs[level](stem)
            targets = (
                (head.cls_preds[level], cls_features, 1.5),
                (head.obj_preds[level], reg_features, 1.5),
                (head.reg_preds[level], reg_features, 0.25),
            )
            for pred, feats, std in targets:
                nn.init.zeros_(pred.bias)
                pred.weight.mul_(std / pred(feats).std())
    save_checkpoint(model, path)
    return path


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (240, 320), fps: float = 10.0) -> Path:
    """A real MJPG/AVI clip with moving shapes, written by OpenCV."""
    return write_synthetic_video(path, frames, size, fps)


def write_config(path: Path, checkpoint: Path | None, **detection) -> Path:
    data = {
        "detection": {
            "backend": "pytorch",
            "model_path": str(checkpoint) if checkpoint else None,
            "model_type": "nano",
            "test_size": list(SMALL_TEST_SIZE),
            "device": "cpu",
            **detection,
        }
    }
    path.write_text(yaml.safe_dump(data))
    return path


def free_ports(count: int = 3) -> list[int]:
    """``count`` distinct ports free on this host (all held open together while chosen, so never the same twice)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


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
