"""Detection outputs: MOT17 text, JSON lines, annotated video or images.

Each writer fills a temporary file and renames it into place on ``close(publish=True)``. A frame's rows are
written whole, so publishing after any stop yields a valid file holding every frame written so far.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError
from reidctl.io.atomic import AtomicFile, atomic_path, ensure_writable_dir
from reidctl.io.sources import Frame
from reidctl.io.synthetic import VIDEO_CODECS


class OutputWriter:
    """One output file. ``write`` takes one camera's frame with its (N, 7) detections."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        self.tmp = self._file.tmp
        self.frames = 0
        self.closed = False

    def write(self, camera: str, frame: Frame, detections: np.ndarray) -> None:
        self._write(camera, frame, detections)
        self.frames += 1

    def _write(self, camera: str, frame: Frame, detections: np.ndarray) -> None:
        raise NotImplementedError

    def close(self, publish: bool = True) -> bool:
        """Publish the file or discard it; True if a file was published. Safe to call twice."""
        if self.closed:
            return False
        self.closed = True
        try:
            self._flush()
            if publish and self._publishable():
                self._file.commit()
                return True
            return False
        finally:
            self._file.discard()

    def _publishable(self) -> bool:
        return True

    def _flush(self) -> None:
        pass


class TextWriter(OutputWriter):
    def __init__(self, path: Path):
        super().__init__(path)
        self.handle = self.tmp.open("w")

    def _flush(self) -> None:
        self.handle.close()

    def _write(self, camera, frame, detections) -> None:
        self.handle.write(self.text(camera, frame, detections))  # one write per frame: a frame is whole or absent

    def text(self, camera: str, frame: Frame, detections: np.ndarray) -> str:
        raise NotImplementedError


class MOTWriter(TextWriter):
    """MOT17 detection format: frame,-1,x,y,w,h,score,-1,-1,-1 (1-based frames, score = obj x class)."""

    def text(self, camera, frame, detections) -> str:
        return "".join(
            f"{frame.index + 1},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj * cls:.5f},-1,-1,-1\n"
            for x1, y1, x2, y2, obj, cls, _ in detections
        )


class JSONLWriter(TextWriter):
    """One JSON object per frame: its camera, 0-based frame index, name and the raw (N, 7) rows."""

    def text(self, camera, frame, detections) -> str:
        rows = [[round(float(v), 5) for v in row] for row in detections]
        return json.dumps({"camera": camera, "frame": frame.index, "name": frame.name, "detections": rows}) + "\n"


def draw_detections(image: np.ndarray, detections: np.ndarray) -> np.ndarray:
    canvas = image.copy()
    for x1, y1, x2, y2, obj, cls, _ in detections:
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 0), 2)
        cv2.putText(canvas, f"{obj * cls:.2f}", (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 0), 1)
    return canvas


class VideoWriter(OutputWriter):
    """Annotated video; the codec follows the extension."""

    def __init__(self, path: Path, fps: float | None):
        fourcc = VIDEO_CODECS.get(Path(path).suffix.lower())
        if fourcc is None:
            raise ReidctlError(f"unsupported video extension '{Path(path).suffix}' (use {', '.join(VIDEO_CODECS)})")
        super().__init__(path)
        self.fourcc, self.fps, self.writer, self.size = fourcc, fps or 30.0, None, None

    def _write(self, camera, frame, detections) -> None:
        image = frame.image
        if self.writer is None:
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise ReidctlError(f"OpenCV cannot write {self.fourcc} video to {self.path}")
        elif image.shape[:2] != self.size:
            image = cv2.resize(image, self.size[::-1])  # a stream that reconnected at another resolution
        self.size = image.shape[:2]
        self.writer.write(draw_detections(image, detections))

    def _publishable(self) -> bool:
        return self.frames > 0  # a video without frames is not a valid file

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class ImageDirWriter:
    """Annotated images, one file per frame, each written atomically."""

    def __init__(self, directory: Path):
        self.path = Path(directory)
        ensure_writable_dir(self.path)
        self.frames = 0

    def write(self, camera: str, frame: Frame, detections: np.ndarray) -> None:
        stem = Path(frame.name).stem if "#" not in frame.name else f"{frame.index:06d}"
        target = self.path / f"{stem}.jpg"
        with atomic_path(target) as tmp:
            if not cv2.imwrite(str(tmp), draw_detections(frame.image, detections)):
                raise ReidctlError(f"cannot write image {target}")
        self.frames += 1

    def close(self, publish: bool = True) -> bool:
        return self.frames > 0
