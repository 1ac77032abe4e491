"""Frame sources: an image, a directory of images, a video file, a camera index or an RTSP/HTTP URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError

# OpenCV's own warnings would repeat, unformatted, what the one-line errors below say.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")


@dataclass
class Frame:
    index: int  # 0-based position in the source
    image: np.ndarray  # uint8 HxWx3 BGR
    name: str  # file name for images, "<source>#<index>" otherwise


class FrameSource:
    """Iterates frames; ``total`` is known for files and folders, None for live sources."""

    def __init__(self, description: str, total: int | None, fps: float | None):
        self.description = description
        self.total = total
        self.fps = fps

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_image(path: Path) -> np.ndarray:
    if not os.access(path, os.R_OK):
        raise ReidctlError(f"image not readable: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ReidctlError(f"cannot decode image (missing or corrupt): {path}")
    return image


class ImageSource(FrameSource):
    def __init__(self, paths: list[Path], description: str):
        super().__init__(description, len(paths), None)
        self.paths = paths

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            yield Frame(index, read_image(path), path.name)


class VideoSource(FrameSource):
    """A video file, camera or network stream through OpenCV."""

    def __init__(self, target: str | int, description: str, live: bool):
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            kind = "" if isinstance(target, int) else ("stream " if live else "video ")
            raise ReidctlError(f"cannot open {kind}{description}")
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise ReidctlError(f"cannot read frames from {description} (unreadable or corrupt)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        super().__init__(description, None if live or count <= 0 else count, fps if fps > 0 else None)
        self.capture = capture
        self.first = first
        self.stem = Path(description).name if not live else "stream"

    def __iter__(self) -> Iterator[Frame]:
        index, image = 0, self.first
        while image is not None:
            yield Frame(index, image, f"{self.stem}#{index}")
            ok, image = self.capture.read()
            image = image if ok else None
            index += 1

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str) -> FrameSource:
    """Open what the user named; every failure is a one-line ReidctlError."""
    if spec.isdigit():
        return VideoSource(int(spec), f"camera {spec}", live=True)
    if spec.lower().startswith(STREAM_PREFIXES):
        return VideoSource(spec, spec, live=True)
    path = Path(spec)
    if not path.exists():
        raise ReidctlError(f"source not found: {spec}")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ReidctlError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in directory {spec}")
        return ImageSource(images, spec)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        read_image(path)  # fail now, before any output is opened
        return ImageSource([path], spec)
    if not os.access(path, os.R_OK):
        raise ReidctlError(f"video not readable: {spec}")
    return VideoSource(str(path), spec, live=False)
