"""Detection outputs: MOT17 text, JSON lines, annotated video or images.

Each writer fills a temporary file and renames it into place on ``close(complete=True)``. Rows are written whole,
so closing after Ctrl-C still yields a valid file holding every frame processed so far.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError
from reidctl.io.atomic import AtomicFile, atomic_path, ensure_writable_dir
from reidctl.io.synthetic import VIDEO_CODECS


class OutputWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        self.tmp = self._file.tmp

    def write(self, frame_index: int, name: str, image: np.ndarray, detections: np.ndarray) -> None:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        """Publish the file (complete=True) or discard it."""
        self._flush()
        if complete:
            self._file.commit()
        self._file.discard()

    def _flush(self) -> None:
        pass


class TextWriter(OutputWriter):
    def __init__(self, path: Path):
        super().__init__(path)
        self.handle = self.tmp.open("w")

    def _flush(self) -> None:
        self.handle.close()


class MOTWriter(TextWriter):
    """MOT17 detection format: frame,-1,x,y,w,h,score,-1,-1,-1 (1-based frames, score = obj x class)."""

    def write(self, frame_index, name, image, detections) -> None:
        for x1, y1, x2, y2, obj, cls, _ in detections:
            self.handle.write(
                f"{frame_index + 1},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj * cls:.5f},-1,-1,-1\n"
            )


class JSONLWriter(TextWriter):
    """One JSON object per frame with the raw (N, 7) rows."""

    def write(self, frame_index, name, image, detections) -> None:
        rows = [[round(float(v), 5) for v in row] for row in detections]
        self.handle.write(json.dumps({"frame": frame_index, "name": name, "detections": rows}) + "\n")


def draw_detections(image: np.ndarray, detections: np.ndarray) -> np.ndarray:
    canvas = image.copy()
    for x1, y1, x2, y2, obj, cls, _ in detections:
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 0), 2)
        cv2.putText(canvas, f"{obj * cls:.2f}", (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    return canvas


class VideoWriter(OutputWriter):
    """Annotated video; the codec follows the extension."""

    def __init__(self, path: Path, fps: float | None):
        fourcc = VIDEO_CODECS.get(Path(path).suffix.lower())
        if fourcc is None:
            raise ReidctlError(f"unsupported video extension '{Path(path).suffix}' (use {', '.join(VIDEO_CODECS)})")
        super().__init__(path)
        self.fourcc, self.fps, self.writer = fourcc, fps or 30.0, None

    def write(self, frame_index, name, image, detections) -> None:
        if self.writer is None:
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise ReidctlError(f"OpenCV cannot write {self.fourcc} video to {self.path}")
        self.writer.write(draw_detections(image, detections))

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.release()


class ImageDirWriter:
    """Annotated images, one file per frame, each written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        ensure_writable_dir(self.directory)

    def write(self, frame_index, name, image, detections) -> None:
        stem = Path(name).stem if "#" not in name else f"{frame_index:06d}"
        target = self.directory / f"{stem}.jpg"
        with atomic_path(target) as tmp:
            if not cv2.imwrite(str(tmp), draw_detections(image, detections)):
                raise ReidctlError(f"cannot write image {target}")

    def close(self, complete: bool = True) -> None:
        pass
