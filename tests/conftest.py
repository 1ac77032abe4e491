"""Shared fixtures: small generated checkpoints in ByteTrack's format, configs and real video files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from reidctl.io.synthetic import write_synthetic_video
from reidctl.models.checkpoint import save_checkpoint
from reidctl.models.yolox import build_yolox

SMALL_TEST_SIZE = [128, 160]


def make_checkpoint(path: Path, size: str = "nano", num_classes: int = 1, seed: int = 0, confident: bool = True) -> Path:
    """A YOLOX checkpoint as ByteTrack writes it ({"model": state_dict}).

    ``confident`` zeroes the objectness/class biases so that untrained weights still produce scores
    around 0.25, above the 0.01 threshold: detections to compare between backends.
    """
    torch.manual_seed(seed)
    model = build_yolox(size, num_classes)
    if confident:
        for pred in list(model.head.obj_preds) + list(model.head.cls_preds):
            torch.nn.init.zeros_(pred.bias)
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
            "test_size": SMALL_TEST_SIZE,
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
