"""Text outputs formatted in a process of its own, beside the interpreter that runs detection.

NumPy formats a step's rows in about a hundred array operations. Each releases the interpreter lock and must take it
back, and in `detect` the lock is shared with every camera's reader, the batch loops and the writer thread: each
return waits for another thread's turn, so formatting slowed from 0.35 ms to 2-3 ms a frame on a busy host. Here a
step's formatting is one request to a child process (`python -m reidctl.io.formatter`): a pickled message each way
over pipes, a few turns at the lock instead of a hundred.

The child only turns rows into text (each writer kind's ``texts``); the writer thread still writes every file, so
every guarantee of the outputs stays where it is. A child that cannot start, dies or fails a request is not needed:
that step, and every later one, is formatted in the calling thread as before, with the same text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pickle
import signal
import struct
import subprocess
import sys
from typing import Any

HEADER = struct.Struct("<Q")  # each message: its length, then the pickled object
PIPE_BYTES = 1 << 20  # a pipe that holds a step's text (16 cameras x 520 rows ~ 1 MB) is read in one call
CLOSE_TIMEOUT_S = 5.0

# A request: per writer kind (a TextWriter class), the frames to format; the answer: per kind, the frames' texts.
Jobs = list[tuple[type, list[Any]]]


def format_jobs(jobs: Jobs) -> list[list[bytes]]:
    return [kind.texts(items) for kind, items in jobs]


def _enlarge(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux only, and capped by fs.pipe-max-size
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
    """The child that formats the output stage's text; ``texts`` falls back to this thread once it is gone."""

    def __init__(self, kinds: list[type]):
        """``kinds``: the writer kinds it will format, imported by the child now rather than at the first step."""
        self._warming = False
        try:
            self._child: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "reidctl.io.formatter"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                start_new_session=True)  # a terminal's Ctrl-C or a group's SIGTERM reaches the parent only
        except OSError:
            self._child = None
            return
        _enlarge(self._child.stdin.fileno())
        _enlarge(self._child.stdout.fileno())
        with contextlib.suppress(OSError):
            _send(self._child.stdin.fileno(), [(kind, []) for kind in kinds])
            self._warming = True

    @property
    def pid(self) -> int | None:
        """The child's process id; None once this thread formats."""
        return None if self._child is None else self._child.pid

    def texts(self, jobs: Jobs) -> list[list[bytes]]:
        """Per job, its frames' texts: from the child, or formatted here where it cannot answer."""
        if self._child is not None:
            # The frames' images stay here: only their index and name are text.
            sent = [(kind, [dataclasses.replace(item, frame=dataclasses.replace(item.frame, image=None))
                            for item in items]) for kind, items in jobs]
            try:
                if self._warming:
                    self._warming = False
                    _receive(self._child.stdout.fileno())
                _send(self._child.stdin.fileno(), sent)
                answer = _receive(self._child.stdout.fileno())
            except (OSError, EOFError, pickle.PickleError):
                answer = None
            if isinstance(answer, list):
                return answer
            self.close()  # it died, or could not format these frames: this thread does, and says why if it fails
        return format_jobs(jobs)

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
    """The child: answer requests until the parent closes its end (or dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        try:
            jobs = _receive(requests)
        except EOFError:
            return
        try:
            answer: Any = format_jobs(jobs)
        except Exception as exc:  # noqa: BLE001  the parent formats these frames itself and reports the error
            answer = f"{type(exc).__name__}: {exc}"
        _send(answers, answer)


if __name__ == "__main__":
    main()
