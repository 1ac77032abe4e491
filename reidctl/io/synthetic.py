"""Synthetic frames and clips: a demo and test input that needs no downloaded data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError
from reidctl.io.atomic import atomic_path

VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}


def video_fourcc(path: Path) -> str:
    """The codec OpenCV writes a video file with, chosen by its extension; a one-line error for any other."""
    fourcc = VIDEO_CODECS.get(Path(path).suffix.lower())
    if fourcc is None:
        raise ReidctlError(f"unsupported video extension '{Path(path).suffix}' (use {', '.join(VIDEO_CODECS)})")
    return fourcc


def synthetic_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """A uint8 BGR frame of ``size`` (height, width): noisy background, two moving person-sized shapes."""
    h, w = size
    rng = np.random.default_rng(index)
    frame = (rng.integers(70, 110, size=(h, w, 3))).astype(np.uint8)
    box_w, box_h = max(w // 8, 4), max(h // 3, 8)
    x = (10 + 8 * index) % max(w - box_w, 1)
    cv2.rectangle(frame, (x, h // 6), (x + box_w, h // 6 + box_h), (30, 60, 200), -1)
    cv2.circle(frame, (w - w // 5, (h // 4 + 5 * index) % h), max(min(h, w) // 10, 3), (220, 220, 50), -1)
    return frame


def write_synthetic_video(path: Path, frames: int = 30, size: tuple[int, int] = (640, 640), fps: float = 30.0) -> Path:
    """Write a real video file (MJPG .avi, mp4v .mp4) with OpenCV, atomically."""
    path = Path(path)
    fourcc = video_fourcc(path)
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
        if not writer.isOpened():
            raise ReidctlError(f"OpenCV cannot write {fourcc} video to {path}")
        try:
            for i in range(frames):
                writer.write(synthetic_frame(i, size))
        finally:
            writer.release()
    return path
