"""Shared fixtures: small generated checkpoints in ByteTrack's format, configs, ONNX exports and real video files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# The tests run in parallel workers, each starting commands and servers of its own: one compute thread per process
# keeps them from crowding the cores (OpenMP threads spin while they wait, so an overfull machine runs far slower).
# Set before torch is imported; the commands and servers the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from helpers import export, make_checkpoint, read_frames, write_config, write_video


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "yolox_nano.pth.tar")


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi")


@pytest.fixture()
def small_config(tmp_path, nano_checkpoint) -> Path:
    return write_config(tmp_path / "config.yaml", nano_checkpoint)


@pytest.fixture(scope="session")
def onnx_fp32(tmp_path_factory, nano_checkpoint) -> Path:
    """Dynamic-batch fp32 export with decoding in the graph (the default export)."""
    return export(nano_checkpoint, tmp_path_factory.mktemp("onnx") / "nano.onnx").path


@pytest.fixture(scope="session")
def frames(video_file) -> list:
    return read_frames(video_file)


@pytest.fixture()
def full_disk(tmp_path):
    """A real 200 KiB file system (tmpfs): it fills within a few frames of crowded MOT text or video."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
