"""Detection outputs: MOT17 text, JSON lines, annotated video or images (with tracks where tracked).

Each writer fills a temporary file (a temporary folder for images) and moves it into place on ``close(publish=True)``.
A frame is written whole or not at all: a write that fails (a full disk) takes back what it wrote of that frame, and
``undo_last`` takes back a whole frame that another output could not take, so every output can be cut to the same
frames. Publishing after any stop yields valid files holding every frame written so far.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError
from reidctl.io.atomic import AtomicFile, ensure_writable_dir, write_all
from reidctl.io.formatting import jsonl_texts, mot_texts, track_rows
from reidctl.io.sources import Frame
from reidctl.io.synthetic import video_fourcc


@dataclass
class FinishedFrame:
    """A camera's frame with its (N, 7) detections and, when tracked, its (M, 6) tracks (id, x, y, w, h, score)."""

    camera: str
    frame: Frame
    detections: np.ndarray
    image_size: tuple[int, int] | None = None  # (height, width): kept where the image itself is not
    tracks: np.ndarray | None = None


def _cannot_write(path: Path, exc: OSError) -> ReidctlError:
    return ReidctlError(f"cannot write {path}: {exc.strerror or exc}")


class OutputWriter:
    """One output. ``write`` takes one camera's finished frame; ``undo_last`` removes the last frame written where the
    writer can (``undoable``)."""

    undoable = True
    draws = False  # needs the frame's image
    label = "output"  # its kind, as the output stage's time per output names it

    def __init__(self, path: Path):
        self.path = Path(path)
        self.frames = 0
        self.closed = False
        self.failed = False  # a write failed that could not be taken back: the output is not published

    def write(self, item: FinishedFrame) -> None:
        try:
            self._write(item)
        except BaseException:
            self.failed = not self.undoable
            raise
        self.frames += 1

    def undo_last(self) -> None:
        self._undo_last()
        self.frames -= 1

    def close(self, publish: bool = True) -> bool:
        """Publish the output or discard it; True if it was published. Safe to call twice."""
        if self.closed:
            return False
        self.closed = True
        try:
            self._flush()
            if publish and not self.failed and self._publishable():
                self._publish()
                return True
            return False
        finally:
            self._discard()

    def _write(self, item: FinishedFrame) -> None:
        raise NotImplementedError

    def _undo_last(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def _publishable(self) -> bool:
        return True

    def _publish(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError


class FileWriter(OutputWriter):
    """One file, written to a temporary file beside it and renamed into place."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._file = AtomicFile(self.path)
        self.tmp = self._file.tmp

    def _publish(self) -> None:
        self._file.commit()

    def _discard(self) -> None:
        self._file.discard()


class TextWriter(FileWriter):
    """Text, one unbuffered write per frame: what a failed write leaves of its frame is cut off again."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_TRUNC)
        self.size = 0
        self._last_start = 0  # where the last frame's text begins: undo_last cuts the file there
        # The next frames' text, in order, made beforehand: the text itself, or the length of the text that the output
        # stage's formatting process already wrote at the file's end (reidctl/io/formatter.py).
        self.formatted: deque[bytes | int] = deque()

    def _write(self, item) -> None:
        entry = self.formatted.popleft() if self.formatted else self.texts([item])[0]
        if isinstance(entry, int):
            length = entry
        else:
            try:
                write_all(self._fd, entry, self.size)
            except OSError as exc:
                os.ftruncate(self._fd, self.size)
                raise _cannot_write(self.path, exc) from None
            length = len(entry)
        self._last_start, self.size = self.size, self.size + length

    def _undo_last(self) -> None:
        self.size = self._last_start
        os.ftruncate(self._fd, self.size)

    def _flush(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.ftruncate(fd, self.size)  # text written ahead for frames this output never took
            finally:
                os.close(fd)

    @staticmethod
    def texts(items: list[FinishedFrame]) -> list[bytes]:
        """The text of several frames (of any writers of this kind), formatted in one pass."""
        raise NotImplementedError


class MOTWriter(TextWriter):
    """MOT17 detection format: frame,-1,x,y,w,h,score,-1,-1,-1 (1-based frames, score = obj x class)."""

    label = "mot"

    @staticmethod
    def texts(items):
        return mot_texts([(item.frame.index, item.detections) for item in items])


class JSONLWriter(TextWriter):
    """One JSON object per frame: its camera, 0-based frame index, name and the raw (N, 7) rows; when tracked, its
    tracks as [id, x, y, w, h, score] too."""

    label = "jsonl"

    @staticmethod
    def texts(items):
        texts = jsonl_texts([(item.camera, item.frame.index, item.frame.name, item.detections) for item in items])
        return [text if item.tracks is None
                else text[:-2] + b', "tracks": ' + json.dumps(track_rows(item.tracks)).encode() + b"}\n"
                for item, text in zip(items, texts)]


# One color per track id, to follow a person by eye.
TRACK_COLORS = [(0, 255, 0), (255, 128, 0), (0, 128, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0),
                (128, 0, 255), (0, 0, 255)]


def draw(item: FinishedFrame) -> np.ndarray:
    """The frame's image with its tracks (box and id) where tracked, else its detections (box and score)."""
    if item.tracks is None:
        return draw_detections(item.frame.image, item.detections)
    return draw_tracks(item.frame.image, item.tracks)


def draw_tracks(image: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    canvas = image.copy()
    for track_id, x, y, w, h, _ in tracks.tolist():
        color = TRACK_COLORS[int(track_id) % len(TRACK_COLORS)]
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), color, 2)
        cv2.putText(canvas, str(int(track_id)), (int(x), max(int(y) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1)
    return canvas


def draw_detections(image: np.ndarray, detections: np.ndarray) -> np.ndarray:
    canvas = image.copy()
    for x1, y1, x2, y2, obj, cls, _ in detections:
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 0), 2)
        cv2.putText(canvas, f"{obj * cls:.2f}", (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 0), 1)
    return canvas


def _disk_full(directory: Path) -> bool:
    stats = os.statvfs(directory)
    return (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) == 0


class VideoWriter(FileWriter):
    """Annotated video; the codec follows the extension.

    OpenCV's encoders do not report a failed write (a full disk): each write checks the disk for room, and publishing
    reads the file back (frame count and last frame) before it is renamed into place.
    """

    undoable = False  # written after every other output of its frame took it
    draws = True
    label = "video"

    def __init__(self, path: Path, fps: float | None):
        fourcc = video_fourcc(path)
        super().__init__(path)
        self.fourcc, self.fps, self.writer, self.size = fourcc, fps or 30.0, None, None

    def _write(self, item) -> None:
        image = draw(item)
        if self.writer is None:
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise ReidctlError(f"OpenCV cannot write {self.fourcc} video to {self.path}")
        elif image.shape[:2] != self.size:
            image = cv2.resize(image, self.size[::-1])  # a stream that reconnected at another resolution
        self.size = image.shape[:2]
        if self.writer.write(image) is False or _disk_full(self.tmp.parent):
            raise ReidctlError(f"cannot write {self.path}: no space left on device")

    def _publishable(self) -> bool:
        return self.frames > 0  # a video without frames is not a valid file

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def _publish(self) -> None:
        capture = cv2.VideoCapture(str(self.tmp))
        try:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            capture.set(cv2.CAP_PROP_POS_FRAMES, self.frames - 1)
            last_readable = count == self.frames and capture.read()[0]
        finally:
            capture.release()
        if not last_readable:
            raise ReidctlError(f"the video written to {self.path} cannot be read back (a full disk?)")
        super()._publish()


class ImageDirWriter(OutputWriter):
    """Annotated images, one per frame, named after the frame (an image keeps its whole file name: ``a.png.jpg``;
    a video frame its 0-based index: ``000012.jpg``). They wait in a hidden folder inside the directory until
    published, and vanish with it when the run is discarded, as do the directory and its parents where this writer
    created them and they hold nothing else."""

    draws = True
    label = "images"

    def __init__(self, directory: Path):
        super().__init__(directory)
        self._created = list(itertools.takewhile(lambda folder: not folder.exists(), [self.path, *self.path.parents]))
        ensure_writable_dir(self.path)
        self.tmp = Path(tempfile.mkdtemp(prefix=".images.", dir=self.path))
        self._names: list[str] = []

    def _write(self, item) -> None:
        frame = item.frame
        name = f"{frame.index:06d}.jpg" if "#" in frame.name else f"{frame.name}.jpg"
        ok, encoded = cv2.imencode(".jpg", draw(item))
        if not ok:
            raise ReidctlError(f"cannot encode image {self.path / name}")
        target = self.tmp / name
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                write_all(fd, encoded.tobytes(), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise _cannot_write(self.path / name, exc) from None
        self._names.append(name)

    def _undo_last(self) -> None:
        (self.tmp / self._names.pop()).unlink()

    def _publishable(self) -> bool:
        return self.frames > 0

    def _publish(self) -> None:
        for name in self._names:
            os.replace(self.tmp / name, self.path / name)

    def _discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self._created:  # deepest first: a folder that holds anything stays, and so do its parents
            try:
                folder.rmdir()
            except OSError:
                break

