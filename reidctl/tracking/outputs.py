"""Track outputs: MOT17 tracking files with their seqinfo.ini, JSON lines with track ids, and crops for ReID; and the
two that `detect --track` writes on its output stage (``MOTTrackTextWriter``, ``CropsOutput``).

Like the detection writers, each fills temporary files and publishes them on ``close(publish=True)``; a frame is
written whole, so publishing after any stop gives valid files holding every finished frame, and
``close(publish=False)`` leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from reidctl.errors import ReidctlError
from reidctl.io.atomic import AtomicFile, ensure_writable_dir, write_text_atomic
from reidctl.io.formatting import track_rows
from reidctl.io.writers import OutputWriter, TextWriter

# MOT17 tracking rows: frame (1-based), id, left, top, width, height, score, and -1 for the 3D position.
MOT_TRACK_ROW = "%d,%d,%.2f,%.2f,%.2f,%.2f,%.5f,-1,-1,-1\n"
CROP_INDEX_COLUMNS = ("camera", "track_id", "frame", "x", "y", "w", "h", "score", "best", "file")


@dataclass
class SequenceInfo:
    """What a MOTChallenge seqinfo.ini says of a camera; the image size where known."""

    name: str
    frame_rate: float
    length: int = 0
    width: int | None = None
    height: int | None = None

    def ini(self) -> str:
        rate = int(self.frame_rate) if float(self.frame_rate).is_integer() else self.frame_rate
        lines = ["[Sequence]", f"name={self.name}", f"frameRate={rate}", f"seqLength={self.length}"]
        if self.width and self.height:
            lines += [f"imWidth={self.width}", f"imHeight={self.height}"]
        return "\n".join(lines) + "\n"


def mot_track_text(frame_index: int, tracks: np.ndarray) -> str:
    """MOT17 tracking lines for one frame's (M, 6) tracks (id, x, y, w, h, score): one format over all rows."""
    values = np.empty((len(tracks), 7))
    values[:, 0] = frame_index + 1
    values[:, 1:] = tracks
    return (MOT_TRACK_ROW * len(tracks)) % tuple(values.ravel().tolist())


class _TextFile:
    """A text file written to a temporary file beside it and renamed into place on ``close(publish=True)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        self._handle = self._file.tmp.open("w")
        self.closed = False

    def close(self, publish: bool = True) -> bool:
        if self.closed:
            return False
        self.closed = True
        try:
            self._handle.close()
            if publish:
                self._before_publish()
                self._file.commit()
            return publish
        finally:
            self._file.discard()

    def _before_publish(self) -> None:
        pass


class MOTTrackWriter(_TextFile):
    """One camera's MOT17 tracking file (frame,id,x,y,w,h,score,-1,-1,-1), with ``seqinfo`` written on publish."""

    def __init__(self, path: Path, seqinfo_path: Path, info: SequenceInfo):
        super().__init__(path)
        self.seqinfo_path, self.info = Path(seqinfo_path), info

    def write(self, frame_index: int, tracks: np.ndarray) -> None:
        self._handle.write(mot_track_text(frame_index, tracks))  # one write: a frame is whole or absent
        self.info.length = max(self.info.length, frame_index + 1)

    def _before_publish(self) -> None:
        ensure_writable_dir(self.seqinfo_path.parent)
        write_text_atomic(self.seqinfo_path, self.info.ini())


class TrackJSONLWriter(_TextFile):
    """One JSON object per camera frame: camera, 0-based frame, name, and tracks as [id, x, y, w, h, score]."""

    def write(self, camera: str, frame_index: int, tracks: np.ndarray, name: str | None = None) -> None:
        record = {"camera": camera, "frame": frame_index, "name": name, "tracks": track_rows(tracks)}
        self._handle.write(json.dumps(record) + "\n")


def _safe_name(name: str) -> str:
    """A camera name usable as one directory name."""
    return re.sub(r"[^\w.-]", "_", name) or "_"


class CropsWriter:
    """Person crops for a ReID model: every ``every``-th frame of each track and its best-scored frame, resized to
    ``size`` (width, height), as JPEG files ``<camera>/<track id>/<frame>.jpg`` (``best.jpg``) and one index
    (``index.parquet`` where pyarrow is installed, else ``index.csv``; ``index_format`` chooses) of camera, track id,
    frame (0-based), box, score, best, file.

    The files are written into a hidden staging folder in ``directory`` and moved into place on publish.
    """

    def __init__(self, directory: Path, every: int, size: tuple[int, int], quality: int = 95,
                 index_format: str | None = None):
        if index_format not in (None, "parquet", "csv"):
            raise ReidctlError(f"crop index format must be parquet or csv, got '{index_format}'")
        self.index_format = index_format or ("parquet" if _has_pyarrow() else "csv")
        if self.index_format == "parquet" and not _has_pyarrow():
            raise ReidctlError("a Parquet crop index needs pyarrow: pip install pyarrow (or use a CSV index)")
        self.directory = Path(directory)
        ensure_writable_dir(self.directory)
        self.every, self.size, self.quality = every, (int(size[0]), int(size[1])), quality
        self._staging = Path(tempfile.mkdtemp(prefix=".crops-", dir=self.directory))
        self._seen: dict[tuple[str, int], int] = {}  # frames each track was written so far
        self._best: dict[tuple[str, int], tuple[float, list, bytes]] = {}  # score, index row, JPEG
        self._rows: list[list] = []
        self.closed = False

    def write(self, camera: str, frame_index: int, image: np.ndarray, tracks: np.ndarray) -> None:
        """Crops of one frame's (M, 6) tracks (id, x, y, w, h, score) from its BGR image."""
        height, width = image.shape[:2]
        folder = _safe_name(camera)
        for track_id, x, y, w, h, score in tracks.tolist():
            x1, y1 = max(int(x), 0), max(int(y), 0)
            x2, y2 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
            if x2 <= x1 or y2 <= y1:
                continue  # the box lies outside the image
            key = (camera, int(track_id))
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            best = self._best.get(key)
            if seen % self.every and best is not None and score <= best[0]:
                continue
            jpeg = self._encode(image[y1:y2, x1:x2])
            row = [camera, int(track_id), frame_index, x, y, w, h, score]
            if seen % self.every == 0:
                file = f"{folder}/{int(track_id):06d}/{frame_index:06d}.jpg"
                self._stage(file, jpeg)
                self._rows.append([*row, False, file])
            if best is None or score > best[0]:
                self._best[key] = (score, row, jpeg)

    def _encode(self, crop: np.ndarray) -> bytes:
        resized = cv2.resize(crop, self.size, interpolation=cv2.INTER_LINEAR)
        ok, data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ReidctlError("OpenCV could not encode a crop as JPEG")
        return data.tobytes()

    def _stage(self, file: str, data: bytes) -> None:
        target = self._staging / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def close(self, publish: bool = True) -> bool:
        """Publish every crop written so far with the best-scored crop of each track and the index, or discard."""
        if self.closed:
            return False
        self.closed = True
        try:
            if not publish or not self._seen:
                return False
            for (camera, track_id), (_, row, jpeg) in self._best.items():
                file = f"{_safe_name(camera)}/{track_id:06d}/best.jpg"
                self._stage(file, jpeg)
                self._rows.append([*row, True, file])
            index = self._write_index()
            for path in sorted(self._staging.rglob("*.jpg")):
                target = self.directory / path.relative_to(self._staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            os.replace(index, self.directory / index.name)  # last: an index names only files already in place
            return True
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _write_index(self) -> Path:
        path = self._staging / f"index.{self.index_format}"
        if self.index_format == "csv":
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(CROP_INDEX_COLUMNS)
                writer.writerows(self._rows)
            return path
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(dict(zip(CROP_INDEX_COLUMNS, map(list, zip(*self._rows))))), path)
        return path


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


class MOTTrackTextWriter(TextWriter):
    """``MOTTrackWriter``'s file and seqinfo.ini for the output stage (`detect --track`): a text output, whose last
    frame can be taken back."""

    label = "mot"

    def __init__(self, path: Path, seqinfo_path: Path, info: SequenceInfo):
        super().__init__(path)
        self.seqinfo_path, self.info = Path(seqinfo_path), info
        self._length_before = info.length  # seqLength before the last frame: what undo_last restores

    @staticmethod
    def texts(items):
        return [mot_track_text(item.frame.index, item.tracks).encode() for item in items]

    def _write(self, item) -> None:
        super()._write(item)
        self._length_before, self.info.length = self.info.length, max(self.info.length, item.frame.index + 1)
        if self.info.height is None and item.image_size:
            self.info.height, self.info.width = item.image_size

    def _undo_last(self) -> None:
        super()._undo_last()
        self.info.length = self._length_before

    def _publish(self) -> None:
        ensure_writable_dir(self.seqinfo_path.parent)
        write_text_atomic(self.seqinfo_path, self.info.ini())
        super()._publish()


class CropsOutput(OutputWriter):
    """``CropsWriter`` for the output stage, every camera's crops in one directory: written after the outputs that
    can take a frame back, as videos are, and published whole or not at all."""

    undoable = False
    draws = True
    label = "crops"

    def __init__(self, crops: CropsWriter):
        super().__init__(crops.directory)
        self.crops = crops

    def _write(self, item) -> None:
        self.crops.write(item.camera, item.frame.index, item.frame.image, item.tracks)

    def _publishable(self) -> bool:
        return self.frames > 0

    def _publish(self) -> None:
        self.crops.close(publish=True)

    def _discard(self) -> None:
        self.crops.close(publish=False)  # nothing left once published
