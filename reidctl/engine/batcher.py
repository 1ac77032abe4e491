"""In-process micro-batching: many camera threads, one model call per gathered batch.

Each caller submits one frame and gets a future for its own result. A worker thread takes the first waiting
frame, keeps gathering until ``max_batch`` frames or ``max_delay_ms`` after that first frame, runs one
``detect_batch`` call and hands every caller its row of the output: the same policy as Triton's dynamic
batcher (max batch size, max queue delay), without a server. With ``workers`` > 1 (a DetectorPool: one per
device) that many worker threads gather and run batches from the same queue, so several batches run at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from reidctl.errors import ReidctlError

BatchFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class MicroBatcher:
    """``submit(frame) -> Future[(N, 7)]``; a context manager that stops its workers on exit."""

    def __init__(self, detect_batch: BatchFn, max_batch: int = 8, max_delay_ms: float = 2.0, workers: int = 1):
        if max_batch < 1:
            raise ReidctlError(f"max batch must be at least 1, got {max_batch}")
        if max_delay_ms < 0:
            raise ReidctlError(f"max delay must be >= 0 ms, got {max_delay_ms}")
        self.detect_batch = detect_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        if workers < 1:
            raise ReidctlError(f"workers must be at least 1, got {workers}")
        self.batch_sizes: list[int] = []  # size of every batch run, in order (list.append is atomic)
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, name=f"micro-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, frame: np.ndarray) -> Future:
        future: Future = Future()
        with self._lock:  # no frame may slip in after the stop marker
            if self._closed:
                raise ReidctlError("the micro-batcher is closed")
            self._queue.put((frame, future))
        return future

    def _gather(self, first: tuple[np.ndarray, Future]) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        """The batch that starts with ``first``, and whether the stop marker was reached."""
        batch = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = self._gather(first)
            self._execute(batch)

    def _execute(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        live = [(frame, future) for frame, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes.append(len(live))
        try:
            results = self.detect_batch([frame for frame, _ in live])
        except BaseException as exc:  # the callers see the failure; the worker keeps serving
            for _, future in live:
                future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            future.set_result(result)

    def close(self) -> None:
        """Serve what is queued, then stop the workers; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._workers:  # one stop marker each: a worker takes exactly one, then ends
                self._queue.put(None)
        for worker in self._workers:
            worker.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
