"""Saved detections for `reidctl track`: detect's JSON lines or MOT17 detection files.

JSON lines: one object per camera frame, ``{"camera", "frame" (0-based), "name", "detections": [[7 values], ...]}``,
many cameras in one file; a frame number that jumps is a frame the camera dropped. MOT17 detections:
``frame,-1,x,y,w,h,score,-1,-1,-1`` (1-based), one camera per file, named by the file's stem (by the sequence
folder in the MOTChallenge layout ``<seq>/det/det.txt``); a frame without rows had no detections.
Everything is read and checked before any tracking starts: a bad line is one error naming its file and line.
"""

from __future__ import annotations

import configparser
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidctl.errors import ReidctlError

MOT_COLUMNS = 10


@dataclass
class CameraDetections:
    """One camera's frames in order: (0-based frame, frame name or None, float32 (N, 7) rows)."""

    name: str
    source: Path
    frames: list[tuple[int, str | None, np.ndarray]] = field(default_factory=list)
    fps: float | None = None  # from a seqinfo.ini beside a MOT file
    length: int | None = None  # frames, from the seqinfo.ini
    width: int | None = None
    height: int | None = None


def read_detections(paths: list[Path]) -> dict[str, CameraDetections]:
    """Every camera of every file, by name; a camera in two files is an error."""
    cameras: dict[str, CameraDetections] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ReidctlError(f"detections file not found: {path}")
        found = _read_jsonl(path) if path.suffix.lower() in (".jsonl", ".json") else [_read_mot(path)]
        for camera in found:
            if camera.name in cameras:
                raise ReidctlError(f"camera '{camera.name}' is in both {cameras[camera.name].source} and {path}")
            cameras[camera.name] = camera
    return cameras


def _lines(path: Path):
    try:
        with path.open(encoding="utf-8") as handle:
            yield from enumerate(handle, start=1)
    except UnicodeDecodeError:
        raise ReidctlError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ReidctlError(f"cannot read {path}: {exc.strerror}") from None


def _read_jsonl(path: Path) -> list[CameraDetections]:
    cameras: dict[str, CameraDetections] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReidctlError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ReidctlError(f"{where}: expected a JSON object with camera, frame and detections")
        camera, frame, rows = record.get("camera"), record.get("frame"), record.get("detections")
        if not isinstance(camera, str) or not camera:
            raise ReidctlError(f"{where}: 'camera' must be a non-empty string")
        if type(frame) is not int or frame < 0:
            raise ReidctlError(f"{where}: 'frame' must be a 0-based frame number, got {frame!r}")
        detections = _rows(rows, where)
        entry = cameras.setdefault(camera, CameraDetections(camera, path))
        if entry.frames and frame <= entry.frames[-1][0]:
            raise ReidctlError(f"{where}: frame {frame} of camera '{camera}' does not follow frame "
                               f"{entry.frames[-1][0]}")
        name = record.get("name")
        entry.frames.append((frame, name if isinstance(name, str) else None, detections))
    return list(cameras.values())


def _rows(rows, where: str) -> np.ndarray:
    if not isinstance(rows, list):
        raise ReidctlError(f"{where}: 'detections' must be a list of rows")
    try:
        detections = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise ReidctlError(f"{where}: each detection must be 7 numbers (x1, y1, x2, y2, obj, cls, class)") from None
    if not rows:
        return np.zeros((0, 7), np.float32)
    if detections.ndim != 2 or detections.shape[1] != 7:
        raise ReidctlError(f"{where}: each detection must be 7 numbers (x1, y1, x2, y2, obj, cls, class)")
    return detections


def _read_mot(path: Path) -> CameraDetections:
    frames, values = [], []
    for number, line in _lines(path):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if len(fields) != MOT_COLUMNS:
            raise ReidctlError(f"{path}:{number}: expected {MOT_COLUMNS} columns (MOT17 detections: "
                               f"frame,-1,x,y,w,h,score,-1,-1,-1), got {len(fields)}")
        try:
            frame = int(float(fields[0]))
            x, y, w, h, score = map(float, fields[2:7])
        except ValueError:
            raise ReidctlError(f"{path}:{number}: not a number in '{text}'") from None
        if frame < 1:
            raise ReidctlError(f"{path}:{number}: frames are 1-based, got {fields[0]}")
        frames.append(frame - 1)
        values.append((x, y, w, h, score))
    camera = CameraDetections(_mot_camera_name(path), path)
    _read_seqinfo(path, camera)
    table = np.array(values, np.float32).reshape(-1, 5)
    rows = np.empty((len(table), 7), np.float32)
    rows[:, :2] = table[:, :2]
    rows[:, 2:4] = table[:, :2] + table[:, 2:4]
    rows[:, 4], rows[:, 5], rows[:, 6] = table[:, 4], 1.0, 0.0  # score = obj x 1
    index = np.array(frames, np.int64)
    order = np.argsort(index, kind="stable")
    index, rows = index[order], rows[order]
    length = max(int(index[-1]) + 1 if len(index) else 0, camera.length or 0)
    bounds = np.searchsorted(index, np.arange(length + 1))
    camera.frames = [(f, None, rows[bounds[f]:bounds[f + 1]]) for f in range(length)]
    return camera


def _mot_camera_name(path: Path) -> str:
    """The sequence's name in the MOTChallenge layout (<seq>/det/det.txt), else the file's stem."""
    if path.parent.name == "det" and path.stem == "det" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def _read_seqinfo(path: Path, camera: CameraDetections) -> None:
    """Frame rate, length and image size from a seqinfo.ini beside the file or one folder up (MOTChallenge)."""
    for candidate in (path.parent / "seqinfo.ini", path.parent.parent / "seqinfo.ini"):
        if candidate.is_file():
            info = read_seqinfo(candidate)
            camera.fps, camera.width, camera.height = info.get("framerate"), info.get("imwidth"), info.get("imheight")
            camera.length = info.get("seqlength")
            return


def read_seqinfo(path: Path) -> dict:
    """The numbers of a seqinfo.ini's [Sequence] section (keys lower-cased)."""
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ReidctlError(f"{path} is not a valid seqinfo.ini: {exc.message}") from None
    if not parser.has_section("Sequence"):
        raise ReidctlError(f"{path} has no [Sequence] section")
    found = {}
    for key, text in parser.items("Sequence"):
        try:
            found[key] = float(text) if key == "framerate" else int(text)
        except ValueError:
            continue  # names and extensions
    return found
