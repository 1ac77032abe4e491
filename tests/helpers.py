"""Test helpers: small generated checkpoints in ByteTrack's format, configs, real video files, ONNX exports, ports,
and the marks of tests that need a GPU or TensorRT."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from reidctl.config import Config, DetectionConfig, TensorRTConfig
from reidctl.export.onnx import export_onnx
from reidctl.io.synthetic import write_synthetic_video
from reidctl.models.checkpoint import load_model, save_checkpoint
from reidctl.core.untrained import lively_yolox

ROOT = Path(__file__).resolve().parents[1]  # the project: what a test's child process runs reidctl and scripts from
SMALL_TEST_SIZE = (128, 160)



def project_env(**extra: str) -> dict[str, str]:
    """This process's environment with the project as PYTHONPATH (a child runs this tree's reidctl), and ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# The marks of a test that needs a GPU or TensorRT: the marker selects it (`pytest -m gpu`, `pytest -m tensorrt`),
# the skip says why it cannot run here.
GPU_MARKS = (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
TENSORRT_MARKS = (
    pytest.mark.tensorrt,
    pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT cannot be installed here (its wheels download from NVIDIA's "
                                                "package index, which is unreachable)"),
    *GPU_MARKS,
)


def _marked(marks):
    def mark(test):
        for one in marks:
            test = one(test)
        return test

    return mark


needs_gpu = _marked(GPU_MARKS)  # a test that runs on a CUDA GPU
needs_tensorrt = _marked(TENSORRT_MARKS)  # a test that builds or runs a TensorRT engine (on a CUDA GPU)


def make_checkpoint(path: Path, size: str = "nano", num_classes: int = 1, seed: int = 0) -> Path:
    """An untrained YOLOX in ByteTrack's format ({"model": state_dict}) that behaves like a trained one numerically
    (reidctl.models.untrained.lively_yolox)."""
    save_checkpoint(lively_yolox(size, num_classes, seed), path)
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
    return export_onnx(model, spec, output, TEST_SIZE, **options)


def onnx_config(onnx_path: Path, checkpoint: Path | None = None, decoded: bool | None = None, **tensorrt) -> Config:
    """In-memory config for the small model whose ONNX is ``onnx_path`` (CPU, test size 128x160)."""
    detection = DetectionConfig(model_path=str(checkpoint) if checkpoint else None, onnx_path=str(onnx_path),
                                decoded=decoded, model_type="nano", test_size=list(TEST_SIZE), device="cpu",
                                tensorrt=TensorRTConfig(**tensorrt))
    return Config(detection=detection)


def onnx_config_file(path: Path, onnx_path: Path, checkpoint: Path | None = None, **detection) -> Path:
    return write_config(path, checkpoint, onnx_path=str(onnx_path), **detection)


def read_frames(video: Path) -> list:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def start_test_server(repository: Path, attempts: int = 3, **options):
    """The bundled server on free ports; on fresh ones again when it exits during start-up: a port found free can be
    taken (by any process's outgoing connection) before the server binds it."""
    from reidctl.errors import ReidctlError
    from reidctl.triton.server import Ports, start_server

    for attempt in range(attempts):
        try:
            return start_server(repository, Ports(*free_ports()), **options)
        except ReidctlError as exc:
            if "already in use" not in str(exc) or attempt == attempts - 1:
                raise


def assert_same_detections(got, want, box_px: float = 0.5, score: float = 0.01, rtol: float = 0.0,
                           threshold: float | None = None) -> None:
    """The same detections in any order: each row of ``want`` matched by its own row of ``got`` (boxes within
    ``box_px``, scores within ``score``, each plus ``rtol`` of the wanted value; the same class). Rows of near-equal
    score come out of NMS in either order, and fp16 GPU runs of different batch sizes or runners take different cuDNN
    algorithms, so near-equal boxes may swap places: no fixed sort lines them up. With the confidence ``threshold``, a
    box whose score (obj x class) lies within ``score`` of it may be kept by one run only."""
    got, want = (np.asarray(rows, dtype=np.float64).reshape(-1, 7) for rows in (got, want))
    if threshold is None:
        assert got.shape == want.shape, f"{len(got)} detections, expected {len(want)}"
    tolerance = np.array([box_px] * 4 + [score] * 2 + [0.0]) + rtol * np.abs(want[:, None, :])
    close = (np.abs(want[:, None, :] - got[None, :, :]) <= tolerance).all(axis=2)  # close[i, j]: want i ~ got j
    free = np.ones(len(got), dtype=bool)
    unmatched = []
    for i in np.argsort(close.sum(axis=1)):  # the rows with the fewest candidates choose first
        candidates = np.flatnonzero(close[i] & free)
        if len(candidates):
            free[candidates[0]] = False
        else:
            unmatched.append(want[i])
    for row in [*unmatched, *got[free]]:
        borderline = threshold is not None and row[4] * row[5] < threshold + score
        assert borderline, f"only one run has the detection {row.round(3).tolist()}"


def canonical_rows(rows) -> np.ndarray:
    """Detection rows (N, 7) in a canonical order: two equal scores may come out of NMS in either order."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return rows[np.lexsort(np.round(rows, 2).T[::-1])]


def take_sigint() -> None:
    """For a command started by a test (``preexec_fn``): a test run started in the background of a non-interactive
    shell ignores SIGINT, and so would the command, which then never sees the Ctrl-C a test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_warnings(warnings: list[str]) -> list[str]:
    """A server start's warnings without the one any start may give when a server that a test running beside it
    killed has left its shared memory (removed by the start, which says so)."""
    return [line for line in warnings
            if not ("shared-memory region(s)" in line and "left by a server that is gone" in line)]
