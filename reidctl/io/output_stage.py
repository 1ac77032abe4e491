"""The output stage: every output is formatted and written on its own thread, off the detection path.

Detection hands each step's frames over (``submit``) and goes on at once; a writer thread takes the steps in the order
they came, so each camera's frames keep their order. The hand-off queue holds at most ``capacity`` frames: a producer
that finds it full waits, and the time it waited is counted (the outputs are then what limits the run). A step's
frames are tracked (with tracking), and their text formatted and appended to the files, in a process of its own
(reidctl/io/formatter.py), away from the interpreter lock that detection holds.

Every frame reaches all of its outputs or none: the outputs that can take a frame back (text, images) are written
first, one frame at a time, and a frame that one of them cannot take is taken back from the others; annotated videos,
which cannot take a frame back, get each frame last, once the others hold it (a step's videos in parallel: OpenCV
encodes without the interpreter lock). An output that fails stops the stage: it takes no frame more, and the failure
(``failure``) names the output. ``close`` stops taking frames, writes every frame already handed over, then publishes.

With ``trackers`` (one per camera) each frame is tracked too, before it is written: each camera's frames in order, each
at its own frame number (a frame the camera dropped is a gap the tracker predicts across).
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from reidctl.errors import ReidctlError, describe_error, first_line
from reidctl.io.formatter import FormattingProcess
from reidctl.io.sources import Frame
from reidctl.io.writers import FinishedFrame, OutputWriter, TextWriter

DEFAULT_CAPACITY_FRAMES = 64  # frames waiting to be written; each may hold its decoded image (6 MB at 1080p)
RECENT_SAMPLES = 512
THREAD_NAME = "outputs"


class Tracker(Protocol):
    """One camera's tracker (reidctl.tracking.ByteTracker): (N, 7) detections of a frame -> its (M, 6) tracks."""

    def update(self, detections: np.ndarray, frame_index: int) -> np.ndarray: ...

    @property
    def counts(self) -> Any: ...


class OutputStage:
    """Writes handed-over frames to ``writers[camera]`` (each camera's own) and ``shared`` (every camera's)."""

    def __init__(self, writers: dict[str, list[OutputWriter]], shared: list[OutputWriter],
                 capacity: int = DEFAULT_CAPACITY_FRAMES, on_failure: Callable[[str], None] | None = None,
                 trackers: dict[str, Tracker] | None = None):
        self.capacity = capacity
        self.track_counts: dict[str, Any] = {}  # per tracked camera, after its last frame written
        self._on_failure = on_failure
        self._undoable = {camera: [w for w in own if w.undoable] + [w for w in shared if w.undoable]
                          for camera, own in writers.items()}
        self._last = {camera: [w for w in own if not w.undoable] + [w for w in shared if not w.undoable]
                      for camera, own in writers.items()}
        self._draws = {camera: any(w.draws for w in own + shared) for camera, own in writers.items()}
        self.writers = [w for own in writers.values() for w in own] + shared
        self._condition = threading.Condition()
        self._steps: deque[list[FinishedFrame]] = deque()
        self._queued = 0  # frames in _steps and in the step being written
        self._accepting = True
        self.failure: str | None = None  # why an output failed: the stage stopped taking frames there
        self.frames = 0  # written to every output
        self.rows = 0
        self._write_seconds = array("d")  # per frame: formatting and writing it to all its outputs
        self._seconds_by_output: Counter[str] = Counter()  # per writer label (and "tracking"): what it took in all
        self.wait_seconds = 0.0  # producers blocked on a full queue
        self.waits = 0
        self._pool: ThreadPoolExecutor | None = None
        text_kinds = sorted({type(w) for w in self.writers if isinstance(w, TextWriter)}, key=lambda k: k.__name__)
        self._formatter = FormattingProcess(text_kinds, trackers) if text_kinds or trackers else None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    # -- producers --------------------------------------------------------------------------------------------
    def submit(self, camera_frames: list[tuple[str, Frame, np.ndarray]]) -> bool:
        """Hand a step's frames over; waits while the queue is full. False once the stage stopped taking frames:
        those frames are not finished."""
        step = [FinishedFrame(camera, frame if self._draws[camera] else Frame(frame.index, None, frame.name), rows,
                              frame.image.shape[:2])
                for camera, frame, rows in camera_frames]  # an image nothing draws on is not kept waiting
        with self._condition:
            if self._queued and self._queued + len(step) > self.capacity and self._accepting:
                started = time.perf_counter()
                self._condition.wait_for(
                    lambda: not self._accepting or not self._queued or self._queued + len(step) <= self.capacity)
                self.wait_seconds += time.perf_counter() - started
                self.waits += 1
            if not self._accepting:
                return False
            self._steps.append(step)
            self._queued += len(step)
            self._condition.notify_all()
            return True

    def close(self, publish: bool = True) -> tuple[list[Path], list[str]]:
        """Stop taking frames, write those handed over, then publish (or discard) every output, each even if
        another fails. Returns the paths published and one line per output that could not be published."""
        with self._condition:
            self._accepting = False
            self._condition.notify_all()
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()
        if self._formatter is not None:
            self._formatter.close()
        written, errors = [], []
        for writer in self.writers:
            try:
                if writer.close(publish=publish):
                    written.append(writer.path)
            except (OSError, ReidctlError) as exc:
                errors.append(f"cannot publish {writer.path}: {first_line(exc)}")
        return written, errors

    # -- statistics --------------------------------------------------------------------------------------------
    def statistics(self, recent: bool = False) -> dict:
        """Frames and rows written, per-frame write times in seconds (the last 512 with ``recent``), the frames
        queued now and the queue's capacity, and the time producers waited on a full queue."""
        with self._condition:
            samples = np.array(self._write_seconds[-RECENT_SAMPLES:] if recent else self._write_seconds)
            return {"frames": self.frames, "rows": self.rows, "write_seconds": samples,
                    "seconds_by_output": dict(self._seconds_by_output),
                    "queue_depth": self._queued, "queue_capacity": self.capacity,
                    "wait_seconds": self.wait_seconds, "waits": self.waits, "failure": self.failure}

    def tracks(self) -> dict[str, Any]:
        """Per tracked camera: its tracks (active, lost, total) after its last frame written."""
        with self._condition:
            return dict(self.track_counts)

    # -- the writer thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._steps or not self._accepting)
                if not self._steps:
                    return  # stopped and drained
                step = self._steps.popleft()
            try:
                self._write_step(step)
            except Exception as exc:  # noqa: BLE001  the stage stops and says why; what was written is kept
                self._fail(describe_error(exc))
                return
            with self._condition:
                self._queued -= len(step)
                self._condition.notify_all()

    def _fail(self, failure: str) -> None:
        with self._condition:
            self.failure = failure
            self._accepting = False
            self._steps.clear()
            self._queued = 0
            self._condition.notify_all()
        if self._on_failure is not None:
            self._on_failure(failure)

    def _prepare_step(self, step: list[FinishedFrame]) -> float:
        """Track each tracked frame (each camera's in order), then make each text writer's text for the step's
        frames, every kind of text for all its frames at once (16 cameras' MOT files: one pass, not 16), and append
        it to each file; all of it in the formatting process, which leaves each text writer only its frames' lengths
        to take (or, where this thread formats, the text to write). The seconds it took per frame."""
        if self._formatter is None:
            return 0.0
        started = time.perf_counter()
        by_kind: dict[type, list[tuple[TextWriter, int]]] = {}
        for position, item in enumerate(step):
            for writer in self._undoable[item.camera]:
                if isinstance(writer, TextWriter):
                    by_kind.setdefault(type(writer), []).append((writer, position))
        jobs = [(kind, [position for _, position in pairs], [id(writer) for writer, _ in pairs])
                for kind, pairs in by_kind.items()]
        targets = {id(writer): (str(writer.tmp), writer.size) for pairs in by_kind.values() for writer, _ in pairs}
        result = self._formatter.run(step, jobs, targets)
        for pairs, entries in zip(by_kind.values(), result.texts):
            for (writer, _), entry in zip(pairs, entries):
                writer.formatted.append(entry)
        took = time.perf_counter() - started
        # what the work itself did not take: the request to the formatting process and its answer (pickled, piped)
        result.seconds["handover"] = max(took - sum(result.seconds.values()), 0.0)
        with self._condition:
            self.track_counts.update(result.counts)
            self._seconds_by_output.update(result.seconds)
        return took / max(len(step), 1)

    def _write_step(self, step: list[FinishedFrame]) -> None:
        formatting = self._prepare_step(step)
        seconds = []
        spent: Counter[str] = Counter()  # per writer label
        failure = None
        for item in step:  # outputs that can take a frame back, a frame at a time
            started = time.perf_counter() - formatting
            taken = []
            try:
                for writer in self._undoable[item.camera]:
                    began = time.perf_counter()
                    writer.write(item)
                    spent[writer.label] += time.perf_counter() - began
                    taken.append(writer)
            except Exception as exc:  # noqa: BLE001  the others give the frame back; the frames before it stay
                for writer in taken:
                    writer.undo_last()
                failure = exc
                break
            seconds.append(time.perf_counter() - started)
        written = step[:len(seconds)]
        try:
            seconds = [s + v for s, v in zip(seconds, self._write_last(written, spent))]
        except Exception as exc:  # noqa: BLE001  the failed video is not published: the others hold these frames
            failure = exc
        with self._condition:
            self.frames += len(written)
            self.rows += sum(len(item.detections) for item in written)
            self._write_seconds.extend(seconds)
            self._seconds_by_output.update(spent)
        if failure is not None:
            raise failure

    def _write_last(self, step: list[FinishedFrame], spent: Counter[str]) -> list[float]:
        """The videos of the step's frames (each camera's frames in order, the cameras at once); per frame the
        seconds it took, and each writer's seconds added to ``spent`` by its label. A video that fails is not
        published."""
        by_writer: dict[int, list[int]] = {}
        for position, item in enumerate(step):
            for writer in self._last[item.camera]:
                by_writer.setdefault(id(writer), []).append(position)
        seconds = [0.0] * len(step)
        if not by_writer:
            return seconds
        writers = {id(w): w for w in self.writers}

        def write(writer: OutputWriter, positions: list[int]) -> float:
            total = 0.0
            for position in positions:
                started = time.perf_counter()
                writer.write(step[position])
                took = time.perf_counter() - started
                seconds[position] += took
                total += took
            return total

        jobs = [(writers[key], positions) for key, positions in by_writer.items()]
        if len(jobs) == 1:
            totals = [write(*jobs[0])]
        else:
            if self._pool is None:
                videos = sum(map(len, self._last.values()))
                self._pool = ThreadPoolExecutor(min(videos, os.cpu_count() or 1), thread_name_prefix=THREAD_NAME)
            futures = [self._pool.submit(write, *job) for job in jobs]
            wait(futures)
            totals = [future.result() for future in futures]  # the first failure, once every video had its turn
        for (writer, _), total in zip(jobs, totals):
            spent[writer.label] += total
        return seconds
