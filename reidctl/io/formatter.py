"""The output stage's work on a step's frames (tracking, text, appending it) in a process of its own, beside the
interpreter that runs detection.

NumPy formats a step's rows in about a hundred array operations, a tracker's update is dozens more per camera, and
each frame's text is a write to each file. Each of these releases the interpreter lock and must take it back, and
in `detect` the lock is shared with every camera's reader, the batch loops and the writer thread: each return waits
for another thread's turn (docs/MULTICAMERA.md measures it). Here a step is one request to a child process
(`python -m reidctl.io.formatter`): a pickled message each way over pipes, a few turns at the lock instead of hundreds.

The child tracks each camera (it holds the trackers from its start), turns rows into text (each writer kind's
``texts``) and appends each file's text at the end the writer thread gave it, one write per file. The writer thread
then takes each frame into every output by its text's length, and keeps every guarantee of the outputs: a frame in
all of them or none, and each text file cut to the frames it took before it is published.

Without tracking, a child that cannot start or dies is not needed: that step, and every later one, is formatted and
written by the calling thread, with the same text. With tracking, a child that dies took the tracks with it: the
stage stops with an error that says so (every frame written before is kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from reidctl.errors import ReidctlError
from reidctl.io.atomic import write_all

HEADER = struct.Struct("<Q")  # each message: its length, then the pickled object
PIPE_BYTES = 1 << 20  # a pipe that holds a whole request (16 cameras x 520 rows ~ 0.25 MB) takes it in one write
CLOSE_TIMEOUT_S = 5.0
# The child's arrays are small: NumPy's BLAS and OpenMP thread pools would only start a thread per core that spins
# after the imports, on every core at once, while the cameras start (docs/PERFORMANCE.md).
ONE_THREAD_POOLS = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
# A step with fewer rows is formatted in the calling thread. Its arrays (rows x 4 values) are below the 500 elements
# from which NumPy gives up the interpreter lock, so formatting it takes few turns at the lock, and costs less than a
# request's round trip (docs/MULTICAMERA.md has the measurement).
ROWS_WORTH_A_REQUEST = 128

# What to format: per writer kind (a TextWriter class), the positions of its frames among the step's and, per frame,
# the key of the writer it goes to. Where the text goes: per writer key, its temporary file and where it ends.
Jobs = list[tuple[type, list[int], list[int]]]
Targets = dict[int, tuple[str, int]]


@dataclasses.dataclass
class StepResult:
    # Per job, for each frame what its text writer takes (TextWriter.formatted): the text, or the length of the text
    # the process already appended to the file.
    texts: list[list[bytes | int]]
    tracks: list[Any] | None  # per frame, its tracks, where tracked
    counts: dict[str, Any]  # per tracked camera, its track counts after the step
    # Seconds each part of the work took: "tracking", and each writer kind's label (making its text, and appending
    # it where the process wrote it), so that a run can say which output costs it most.
    seconds: Counter[str] = dataclasses.field(default_factory=Counter)


def track_and_format(items: list, jobs: Jobs, trackers: dict[str, Any] | None) -> StepResult:
    """Track the step's frames (each camera's in order) where ``trackers`` are given, then format each job."""
    counts = {}
    seconds: Counter[str] = Counter()
    if trackers:
        started = time.perf_counter()
        for item in items:
            tracker = trackers[item.camera]
            item.tracks = tracker.update(item.detections, item.frame.index)
            counts[item.camera] = tracker.counts
        seconds["tracking"] = time.perf_counter() - started
    texts = []
    for kind, positions, _ in jobs:
        started = time.perf_counter()
        texts.append(kind.texts([items[i] for i in positions]))
        seconds[kind.label] += time.perf_counter() - started
    return StepResult(texts, [item.tracks for item in items] if trackers else None, counts, seconds)


def write_texts(result: StepResult, jobs: Jobs, targets: Targets, files: dict[str, int]) -> None:
    """Append each writer's frames' text to its file, one write per writer, and leave only the lengths in ``result``.
    Where a write fails (a full disk) ``result`` keeps the text: the writer thread then writes the step itself, a frame
    at a time over what was appended here, and so fails at the frame the disk cannot take (a text writer cuts its
    file to the frames it took, on a failure and before publishing)."""
    by_writer: dict[int, list[bytes]] = {}
    labels: dict[int, str] = {}
    for (kind, _, keys), texts in zip(jobs, result.texts):
        for key, text in zip(keys, texts):
            by_writer.setdefault(key, []).append(text)
            labels[key] = kind.label
    try:
        for key, texts in by_writer.items():
            started = time.perf_counter()
            path, offset = targets[key]
            if path not in files:
                files[path] = os.open(path, os.O_WRONLY)
            write_all(files[path], b"".join(texts), offset)
            result.seconds[labels[key]] += time.perf_counter() - started
    except OSError:
        return
    result.texts = [[len(text) for text in texts] for texts in result.texts]


def _enlarge(fd: int) -> None:
    with contextlib.suppress(ImportError, OSError, AttributeError):  # Linux only, and capped by fs.pipe-max-size
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int) -> Any:
    """The next message; EOFError where the other side closed its end."""
    def exactly(size: int) -> bytes:
        parts = []
        while size:
            part = os.read(fd, size)
            if not part:
                raise EOFError
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    (size,) = HEADER.unpack(exactly(HEADER.size))
    return pickle.loads(exactly(size))


class FormattingProcess:
    """The child that tracks and formats the output stage's steps; ``run`` falls back to the calling thread where it
    can (the module docstring says when)."""

    def __init__(self, kinds: list[type], trackers: dict[str, Any] | None = None):
        """``kinds``: the writer kinds it will format; ``trackers``: one per tracked camera, handed to the child.
        Returns once the child is ready (it imports what it formats with), so that no step waits for its start."""
        self._trackers = trackers or None
        self._holds_tracks = False  # the child holds the trackers' state: it cannot be formatted around
        try:
            self._child: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "reidctl.io.formatter"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, **ONE_THREAD_POOLS},
                start_new_session=True)  # a terminal's Ctrl-C or a group's SIGTERM reaches the parent only
        except OSError:
            self._child = None
            return
        _enlarge(self._child.stdin.fileno())
        _enlarge(self._child.stdout.fileno())
        try:
            _send(self._child.stdin.fileno(), (kinds, self._trackers))
            ready = _receive(self._child.stdout.fileno()) is True
        except (OSError, EOFError, pickle.PickleError):
            ready = False
        if not ready:
            self.close()  # formatted and tracked in the calling thread from the start: nothing is lost
            return
        self._holds_tracks = self._trackers is not None

    @property
    def pid(self) -> int | None:
        """The child's process id; None once the calling thread does the work."""
        return None if self._child is None else self._child.pid

    def run(self, items: list, jobs: Jobs, targets: Targets) -> StepResult:
        """Track (where tracked) and format a step's frames ``items`` (FinishedFrame), and write the text to
        ``targets`` where the process can (else the result holds the text); sets each item's tracks."""
        rows = sum(len(item.detections) for item in items)
        if self._child is None or (rows < ROWS_WORTH_A_REQUEST and not self._holds_tracks):
            return track_and_format(items, jobs, self._trackers)
        # The frames' images stay here: only their index and name are text.
        sent = [dataclasses.replace(item, frame=dataclasses.replace(item.frame, image=None)) for item in items]
        try:
            _send(self._child.stdin.fileno(), (sent, jobs, targets))
            answer = _receive(self._child.stdout.fileno())
        except (OSError, EOFError, pickle.PickleError):
            answer = None
        if isinstance(answer, StepResult):
            for item, tracks in zip(items, answer.tracks or ()):
                item.tracks = tracks
            return answer
        if isinstance(answer, Exception):
            raise answer  # the frames' own error (a tracker's, say), as this thread would have raised it
        why = self._ending()
        self.close()
        if self._holds_tracks:
            raise ReidctlError(f"the output stage's formatting process ended ({why}): its tracks are lost")
        return track_and_format(items, jobs, None)

    def _ending(self) -> str:
        try:
            code = self._child.wait(CLOSE_TIMEOUT_S)  # its end of the pipe closed: it is ending, if not yet reaped
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            child.stdin.close()  # end of requests: the child exits
        try:
            child.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def main() -> None:
    """The child: take the kinds and trackers, say it is ready, then answer steps until the parent closes its end
    (or dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        _kinds, trackers = _receive(requests)  # unpickling the kinds imports their modules
    except EOFError:
        return
    gc.freeze()  # the imports stay out of the collector's passes, which would hold steps up
    _send(answers, True)
    files: dict[str, int] = {}  # the writers' temporary files, open for writing
    while True:
        try:
            items, jobs, targets = _receive(requests)
        except EOFError:
            # Every write was made before its answer: nothing is left to flush, and the interpreter's teardown
            # would keep the writer thread's close() waiting for tens of milliseconds.
            os._exit(0)
        try:
            answer: Any = track_and_format(items, jobs, trackers)
            write_texts(answer, jobs, targets, files)
        except Exception as exc:  # noqa: BLE001  the parent raises it
            answer = exc
        try:
            _send(answers, answer)
        except (pickle.PickleError, TypeError, AttributeError):  # an exception that does not pickle: its words do
            _send(answers, ReidctlError(f"{type(answer).__name__}: {answer}"))


if __name__ == "__main__":
    from reidctl.io.formatter import main as module_main  # answers pickle as reidctl.io.formatter's, not __main__'s

    module_main()
