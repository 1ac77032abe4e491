"""Cameras as clients in a closed loop: threads in this process (``closed_loop``), or client processes for a
server's runs, each running a share of the cameras with a runner of its own (``ClientProcesses``).

One process's requests are paced by the GIL (each request's serialisation and callbacks hold it): from one client
process, a server on several GPUs forms small batches, waiting for requests (docs/PERFORMANCE.md). A run through
``ClientProcesses`` splits its cameras and requests over several processes that start together.
Latencies use ``time.perf_counter``, one monotonic clock for every process of the host.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from reidctl.errors import ReidctlError, describe_error, first_line

Tick = Callable[[], None]  # called once per answered request (a progress bar's advance)
T = TypeVar("T")
READY_TIMEOUT_S = 300.0  # a process's start: imports, the connection and its first request
# What one client process may take: room for one that needs torch (a server model whose NMS runs on the client),
# the largest kind (docs/PERFORMANCE.md)
CLIENT_PROCESS_BYTES = 768 << 20
RUN_TIMEOUT_S = 1800.0  # one closed-loop run
CLOSE_TIMEOUT_S = 10.0  # the processes' own ending, before they are killed


class _Tickets:
    """A shared budget of requests for the camera threads; ``stop()`` ends the run early (on a failure)."""

    def __init__(self, total: int):
        self.remaining = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True

    def stop(self) -> None:
        with self._lock:
            self.remaining = 0


def cameras_together(camera: Callable[[int], T], cameras: int, stop: Callable[[], None],
                     before_start: Callable[[], None] = lambda: None) -> tuple[list[T], float]:
    """``camera(index)`` on ``cameras`` threads that start at once, once every thread is up (``before_start`` runs
    just before); their results in order and when they started. Whatever ends the wait early (Ctrl-C, a camera's
    error) calls ``stop``, for the cameras to stop too, and releases those not started yet: a camera left waiting
    for the start would hold the run forever."""
    barrier = threading.Barrier(cameras + 1)

    def started(index: int) -> T:
        barrier.wait()
        return camera(index)

    with ThreadPoolExecutor(max_workers=cameras, thread_name_prefix="camera") as pool:
        try:
            futures = [pool.submit(started, i) for i in range(cameras)]
            before_start()
            barrier.wait()
            start = time.perf_counter()
            return [future.result() for future in futures], start
        except BaseException:
            stop()
            barrier.abort()
            raise


def closed_loop(
    serve: Callable[[np.ndarray], object], frames: Sequence[np.ndarray], cameras: int, requests: int, tick: Tick
) -> tuple[list[float], float]:
    """``cameras`` threads each submit a frame, wait for its result, and repeat until ``requests`` are served.

    Returns every request's latency (seconds) and the wall time from the common start to the last result.
    """
    tickets = _Tickets(requests)

    def camera(index: int) -> list[float]:
        latencies = []
        try:
            while tickets.take():
                frame = frames[(index + len(latencies) * cameras) % len(frames)]
                start = time.perf_counter()
                serve(frame)
                latencies.append(time.perf_counter() - start)
                tick()
        except BaseException:
            tickets.stop()  # the other cameras stop too; the failure reaches the caller below
            raise
        return latencies

    # Ctrl-C: the cameras stop too, instead of serving the requests left
    results, start = cameras_together(camera, cameras, tickets.stop)
    return [sample for latencies in results for sample in latencies], time.perf_counter() - start


def _shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares, larger first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _client_main(config, backend: str, frames, commands, results, barrier, frame_sender) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the run and its clients, which would
    # each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet = lambda message: None  # noqa: E731  the parent's own runner has said it
    try:
        detector = frame_sender(config, quiet) if frame_sender else None
        if detector is None:
            from reidctl.core.detector import create_detector

            detector = create_detector(config, backend, warn=quiet)
        detector.detect(frames[0])  # the connection and the first request's one-off costs, before any run
    except BaseException as exc:  # noqa: BLE001  reported to the parent, which fails the run with it
        results.put(("error", first_line(describe_error(exc))))
        return
    results.put(("ready", None))
    with detector:
        while (command := commands.get()) is not None:
            cameras, requests = command
            barrier.wait()
            start = time.perf_counter()
            try:
                latencies = closed_loop(detector.detect, frames, cameras, requests, lambda: None)[0] if cameras else []
            except BaseException as exc:  # noqa: BLE001
                results.put(("error", first_line(describe_error(exc))))
                continue
            results.put(("done", (latencies, start, time.perf_counter())))


def check_client_processes(count: int, cameras: Sequence[int]) -> None:
    """At most one process per camera (more would idle), and as many as the memory available here holds."""
    most = max(cameras)
    if count > most:
        raise ReidctlError(f"--client-processes {count}: at most one per camera, {most} for --cameras "
                           f"{','.join(map(str, cameras))}")
    available = available_memory_bytes()
    fits = available // CLIENT_PROCESS_BYTES if available is not None else count
    if count > fits:
        raise ReidctlError(f"--client-processes {count}: the {available / 2**30:.1f} GiB of memory available here "
                           f"hold {fits} (up to {CLIENT_PROCESS_BYTES / 2**20:.0f} MiB each)")


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ClientProcesses:
    """``count`` processes, each with its own runner of ``backend`` (connected once), that run closed loops on
    command; a context manager that stops them. ``frame_sender``: the backend's way to send frames without torch
    (Backend.frame_sender), tried first in each process."""

    def __init__(self, config, backend: str, frames: Sequence[np.ndarray], count: int, frame_sender=None):
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads and a GPU context
        self.count = count
        self._results = context.Queue()
        self._barrier = context.Barrier(count + 1)
        self._commands = [context.Queue() for _ in range(count)]
        self._processes = [
            context.Process(target=_client_main, args=(config, backend, list(frames), commands, self._results,
                                                       self._barrier, frame_sender),
                            name=f"reidctl-client-{i}", daemon=True)
            for i, commands in enumerate(self._commands)
        ]
        try:
            for process in self._processes:
                process.start()
            for _ in self._processes:
                self._receive("ready", READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _receive(self, expected: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = self._results.get(timeout=1.0)
                break
            except queue.Empty:
                if not all(process.is_alive() for process in self._processes):
                    raise ReidctlError("a client process ended unexpectedly") from None
                if time.monotonic() > deadline:
                    raise ReidctlError(f"client processes gave no result within {timeout:g} s") from None
        if kind != expected:  # "error"
            raise ReidctlError(f"client process: {value}")
        return value

    def closed_loop(self, cameras: int, requests: int) -> tuple[list[float], float]:
        """``cameras`` cameras split over the processes, ``requests`` in all; every latency and the wall time from
        the common start to the last result (as ``bench.closed_loop``)."""
        camera_shares = _shares(cameras, self.count)
        request_shares = [round(requests * share / cameras) for share in camera_shares]
        request_shares[0] += requests - sum(request_shares)
        for commands, share, share_requests in zip(self._commands, camera_shares, request_shares):
            commands.put((share, share_requests if share else 0))
        try:
            self._barrier.wait(timeout=READY_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise ReidctlError("a client process did not start the run") from None
        runs = [self._receive("done", RUN_TIMEOUT_S) for _ in self._processes]
        latencies = [sample for samples, _, _ in runs for sample in samples]
        wall = max(end for _, _, end in runs) - min(start for _, start, _ in runs)
        return latencies, wall

    def close(self) -> None:
        for commands, process in zip(self._commands, self._processes):
            if process.is_alive():
                commands.put(None)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S  # one for all: a stopped run leaves each mid-loop
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
