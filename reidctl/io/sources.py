"""Frame sources: an image, a directory of images, a video file, a camera index or an RTSP/HTTP URL, and frames
already in memory (``MemorySource``: what `reidctl bench` plays as cameras).

A *camera* is a named source (``name=source`` on the command line or in a sources file). Network sources open with
FFmpeg's open and read timeouts, so a dead or stalled stream fails within the timeout instead of hanging.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from reidctl.config import DEFAULT_TIMEOUT_S, check_regular_file
from reidctl.errors import ReidctlError

# OpenCV's own warnings would repeat, unformatted, what the one-line errors below say.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")
CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
Warn = Callable[[str], None] | None  # takes a warning about the input (a frame skipped...); None: raise instead


def lower_thread_priority(niceness: int) -> None:
    """Let the calling thread, and the threads it starts from now on (a video's decoder threads), yield the CPU to the
    process's other threads: its niceness goes up by ``niceness`` (Linux, where niceness is per thread; raising it
    needs no privilege). Elsewhere, where it would be the whole process's, nothing changes."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
    except OSError:  # a sandbox that refuses it: the thread runs as it was
        pass


@dataclass
class Frame:
    index: int  # 0-based position in the source
    image: np.ndarray  # uint8 HxWx3 BGR
    name: str  # file name for images, "<source>#<index>" otherwise


class FrameSource:
    """Iterates frames; ``total`` is known for files and folders, None for live sources."""

    live = False
    frame_bytes: int | None = None  # a decoded frame's size where known before reading (the first frame's)

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


class UnopenedSource(FrameSource):
    """A live source that could not be opened at start: reading it fails with why, so that its camera reconnects with
    back-off as a live camera whose stream failed does, while the other cameras run."""

    live = True

    def __init__(self, description: str, reason: str):
        super().__init__(description, None, None)
        self.reason = reason

    def __iter__(self) -> Iterator[Frame]:
        raise ConnectionError(self.reason)


class MemorySource(FrameSource):
    """Frames decoded beforehand, played as a camera: ``count`` frames going round ``frames`` from position ``phase``
    (each camera its own), then the end, as a file of that many frames. Nothing is decoded: a reader only letterboxes
    them. ``fps`` is the rate ``realtime`` plays them at (None: as fast as the detector takes them)."""

    def __init__(self, frames: Sequence[np.ndarray], count: int, phase: int = 0, fps: float | None = None):
        if not frames:
            raise ReidctlError("no frames to play")
        super().__init__(f"{len(frames)} frames in memory", count, fps)
        self.frames = frames
        self.frame_bytes = max(frame.nbytes for frame in frames)
        self.phase = phase

    def __iter__(self) -> Iterator[Frame]:
        for index in range(self.total):
            yield Frame(index, self.frames[(self.phase + index) % len(self.frames)], f"memory#{index}")


def read_image(path: Path) -> np.ndarray:
    if not os.access(path, os.R_OK):
        raise ReidctlError(f"image not readable: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ReidctlError(f"cannot decode image (missing or corrupt): {path}")
    return image


def _report(warn: Warn, message: str) -> None:
    if warn is None:
        raise ReidctlError(message)
    warn(f"warning: {message}")


class ImageSource(FrameSource):
    """Images in name order; an unreadable one is skipped with a warning (an error where ``warn`` is None)."""

    def __init__(self, paths: list[Path], description: str, warn: Warn = None):
        super().__init__(description, len(paths), None)
        self.paths = paths
        self.warn = warn

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                image = read_image(path)
            except ReidctlError as exc:
                _report(self.warn, f"{exc}; skipped it" if self.warn else str(exc))
                continue
            yield Frame(index, image, path.name)


class VideoSource(FrameSource):
    """A video file, camera or network stream through OpenCV; a file's or stream's decoder runs ``decoder_threads``
    threads (0: OpenCV's choice, one per core)."""

    def __init__(self, target: str | int, description: str, live: bool, timeout_s: float = DEFAULT_TIMEOUT_S,
                 warn: Warn = None, decoder_threads: int = 0):
        self.live = live
        if isinstance(target, str):
            params = [cv2.CAP_PROP_N_THREADS, decoder_threads] if decoder_threads > 0 else []
            if live:  # files need no timeout
                timeout_ms = int(timeout_s * 1000)
                params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG if live else cv2.CAP_ANY, params)
        else:  # a local camera's driver has its own timeout and decodes nothing
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
        super().__init__(description, None if live or count <= 0 else count, fps if 0 < fps < 1000 else None)
        self.capture = capture
        self.first = first
        self.frame_bytes = first.nbytes
        self.warn = warn
        self.stem = Path(description).name if not live else "stream"

    def __iter__(self) -> Iterator[Frame]:
        index, image = 0, self.first
        while image is not None:
            yield Frame(index, image, f"{self.stem}#{index}")
            ok, image = self.capture.read()
            image = image if ok else None
            index += 1
        if self.total is not None and index < self.total:
            _report(self.warn, f"video {self.description} ended after {index} of its {self.total} announced frames "
                         "(truncated or corrupt)")

    def close(self) -> None:
        self.capture.release()


def is_live(spec: str) -> bool:
    return spec.isdigit() or spec.lower().startswith(STREAM_PREFIXES)


def open_source(spec: str, timeout_s: float = DEFAULT_TIMEOUT_S, warn: Warn = None,
                decoder_threads: int = 0) -> FrameSource:
    """Open what the user named; every failure is a one-line ReidctlError.

    ``warn`` takes what can be read around (an unreadable image in a folder, a video shorter than it says);
    without it (None) those are errors too. A video's or stream's decoder runs ``decoder_threads`` threads (0:
    OpenCV's choice).
    """
    if not spec.strip():
        raise ReidctlError("empty source: name an image, folder, video, camera index or URL")
    if spec.isdigit():
        return VideoSource(int(spec), f"camera {spec}", live=True, timeout_s=timeout_s)
    if spec.lower().startswith(STREAM_PREFIXES):
        return VideoSource(spec, spec, live=True, timeout_s=timeout_s, decoder_threads=decoder_threads)
    path = Path(spec)
    if not path.exists():
        raise ReidctlError(f"source not found: {spec}")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ReidctlError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in directory {spec}")
        return ImageSource(images, spec, warn)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        read_image(path)  # fail now, before any output is opened
        return ImageSource([path], spec, warn)
    if not os.access(path, os.R_OK):
        raise ReidctlError(f"video not readable: {spec}")
    return VideoSource(str(path), spec, live=False, warn=warn, decoder_threads=decoder_threads)


# -- cameras -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSpec:
    name: str  # unique; names the camera's output files
    source: str

    @property
    def live(self) -> bool:
        return is_live(self.source)


def _derived_name(source: str) -> str:
    if source.isdigit():
        return f"camera{source}"
    if source.lower().startswith(STREAM_PREFIXES):
        parts = urlsplit(source)
        text = f"{parts.hostname or 'stream'}_{parts.port or ''}_{Path(parts.path).stem}"
    else:
        text = Path(source.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "stream"


def _split_name(entry: str) -> tuple[str | None, str]:
    """'name=source' -> (name, source); a URL's query ('?a=b') or a path is never taken for a name."""
    head, sep, tail = entry.partition("=")
    if sep and not any(c in head for c in ":/\\?") and head.strip():
        name = head.strip()
        if not CAMERA_NAME.fullmatch(name):
            raise ReidctlError(f"camera name '{name}' may hold only letters, digits, '.', '_' and '-'")
        return name, tail.strip()
    return None, entry.strip()


def camera_specs(entries: list[str]) -> list[CameraSpec]:
    """Named cameras from 'source' or 'name=source' entries; unnamed ones are named after their source."""
    if not entries:
        raise ReidctlError("no source given: name one or more sources, or --sources FILE")
    parsed = [_split_name(entry) for entry in entries]
    for _, source in parsed:
        if not source:
            raise ReidctlError("empty source: name an image, folder, video, camera index or URL")
    explicit = [name for name, _ in parsed if name]
    repeated = sorted({name for name in explicit if explicit.count(name) > 1})
    if repeated:
        raise ReidctlError(f"camera name given twice: {', '.join(repeated)}")
    taken, specs = set(explicit), []
    for name, source in parsed:
        if name is None:
            base = name = _derived_name(source)
            suffix = 2
            while name in taken:
                name, suffix = f"{base}-{suffix}", suffix + 1
            taken.add(name)
        specs.append(CameraSpec(name, source))
    return specs


def read_source_list(path: Path) -> list[str]:
    """Entries of a sources file: one per line, blank lines and '#' comments (whole line or after a space) ignored."""
    check_regular_file(Path(path), "sources file")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is no part of a name
    except FileNotFoundError:
        raise ReidctlError(f"sources file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReidctlError(f"sources file not readable: {path} ({exc.__class__.__name__})") from None
    entries = [re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip() for line in text.splitlines()]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise ReidctlError(f"sources file {path} names no source")
    return entries
