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


# A generated clip's scene: "noise" draws a fresh noisy background every frame, so every pixel changes and the clip
# takes several times the bits, and the decoding time, of a camera's; "camera" keeps the first frame's background
# still, as a fixed camera sees its scene, and only the shapes move (docs/PERFORMANCE.md has both clips' figures).
SCENES = ("noise", "camera")


def synthetic_frame(index: int, size: tuple[int, int], scene: str = "noise") -> np.ndarray:
    """A uint8 BGR frame of ``size`` (height, width) of ``scene`` (see SCENES): a noisy background, two moving
    person-sized shapes."""
    if scene not in SCENES:
        raise ReidctlError(f"unknown scene '{scene}' (use {', '.join(SCENES)})")
    h, w = size
    rng = np.random.default_rng(index if scene == "noise" else 0)
    frame = (rng.integers(70, 110, size=(h, w, 3))).astype(np.uint8)
    box_w, box_h = max(w // 8, 4), max(h // 3, 8)
    x = (10 + 8 * index) % max(w - box_w, 1)
    cv2.rectangle(frame, (x, h // 6), (x + box_w, h // 6 + box_h), (30, 60, 200), -1)
    cv2.circle(frame, (w - w // 5, (h // 4 + 5 * index) % h), max(min(h, w) // 10, 3), (220, 220, 50), -1)
    return frame


def write_synthetic_video(path: Path, frames: int = 30, size: tuple[int, int] = (640, 640), fps: float = 30.0,
                          scene: str = "noise") -> Path:
    """Write a real video file (MJPG .avi, mp4v .mp4) of ``scene`` with OpenCV, atomically."""
    path = Path(path)
    fourcc = video_fourcc(path)
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
        if not writer.isOpened():
            raise ReidctlError(f"OpenCV cannot write {fourcc} video to {path}")
        try:
            for i in range(frames):
                writer.write(synthetic_frame(i, size, scene))
        finally:
            writer.release()
    return path
