"""Shared fixtures: small generated checkpoints in ByteTrack's format, configs and real video files."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from reidctl.export.onnx import sample_input
from reidctl.io.synthetic import write_synthetic_video
from reidctl.models.checkpoint import save_checkpoint
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


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "yolox_nano.pth.tar")


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi")


@pytest.fixture()
def small_config(tmp_path, nano_checkpoint) -> Path:
    return write_config(tmp_path / "config.yaml", nano_checkpoint)


def free_ports(count: int = 3) -> list[int]:
    """``count`` distinct ports free on this host (all held open together while chosen, so never the same twice)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
