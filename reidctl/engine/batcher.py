"""In-process micro-batching: many camera threads, one model call per gathered batch.

Each caller submits one frame and gets a future for its own result. A worker thread takes the first waiting
frame, keeps gathering until ``max_batch`` frames or ``max_delay_ms`` after that first frame, runs one
``detect_batch`` call and hands every caller its row of the output: the same policy as Triton's dynamic
batcher (max batch size, max queue delay), without a server. Each of the Detector's members (a DetectorPool: one
per device and batch in flight) has its own worker, so several batches run at once. One worker at a time forms a
device's batch (``DeviceTurn``), and while every device's model runs it keeps gathering past ``max_delay_ms``: the
frames that come meanwhile join it instead of starting a second small batch that shares a busy GPU (the bundled
Triton server model's rule: at 16 cameras on one GPU its batches grew from 4.35 to 7.87 frames). Once some device
is free, the usual delay holds: a frame never waits for a busy GPU while another could run it. A full batch starts
at once, its upload overlapping the running model.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from reidctl.engine.detector import Detector, DetectorPool
from reidctl.errors import ReidctlError

Waiting = tuple[np.ndarray, Future]  # a submitted frame and its caller's future
MODEL_POLL_S = 0.0005  # how often a gathering batch looks whether some device's model has finished


class MicroBatcher:
    """``submit(frame) -> Future[(N, 7)]``; a context manager that stops its workers on exit."""

    def __init__(self, detector: Detector | DetectorPool, max_batch: int = 8, max_delay_ms: float = 2.0):
        if max_batch < 1:
            raise ReidctlError(f"max batch must be at least 1, got {max_batch}")
        if max_delay_ms < 0:
            raise ReidctlError(f"max delay must be >= 0 ms, got {max_delay_ms}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.batch_sizes: list[int] = []  # size of every batch run, in order (list.append is atomic)
        self._queue: queue.SimpleQueue[Waiting | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._turns = list({id(member.turn): member.turn for member in detector.members}.values())  # one per device
        self._workers = [threading.Thread(target=self._run, args=(member,), name=f"micro-batcher-{i}", daemon=True)
                         for i, member in enumerate(detector.members)]
        for worker in self._workers:
            worker.start()

    def submit(self, frame: np.ndarray) -> Future:
        future: Future = Future()
        with self._lock:  # no frame may slip in after the stop marker
            if self._closed:
                raise ReidctlError("the micro-batcher is closed")
            self._queue.put((frame, future))
        return future

    def _gather(self, first: Waiting) -> tuple[list[Waiting], bool]:
        """The batch that starts with ``first``, and whether the stop marker was reached."""
        batch = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch:
            # Looked at every MODEL_POLL_S while they run: a CUDA event cannot be waited on together with the queue.
            busy = all(turn.model_running() for turn in self._turns)
            remaining = MODEL_POLL_S if busy else deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                if busy:
                    continue
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, member: Detector) -> None:
        stopping = False
        while not stopping:
            with member.turn.taken():  # passes on once this batch's model has started
                first = self._queue.get()
                if first is None:
                    return
                batch, stopping = self._gather(first)
                self._execute(member, batch)

    def _execute(self, member: Detector, batch: list[Waiting]) -> None:
        live = [(frame, future) for frame, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes.append(len(live))
        try:
            results = member.detect_batch([frame for frame, _ in live])
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
