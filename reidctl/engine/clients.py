"""Client processes for a server's closed-loop runs: each runs a share of the cameras with a runner of its own.

One Python process sends at most about a thousand requests a second to a server (every request holds the GIL for its
serialisation and callbacks, measured on a 16-core host), fewer than a Triton server on two GPUs answers. A run
through ``ClientProcesses`` splits its cameras and requests over several processes that start together.
Latencies use ``time.perf_counter``, one monotonic clock for every process of the host.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

from reidctl.errors import ReidctlError, describe_error, first_line

READY_TIMEOUT_S = 300.0  # a process's start: imports, the connection and its first request
RUN_TIMEOUT_S = 1800.0  # one closed-loop run


def _shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares, larger first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _client_main(config, backend: str, frames, commands, results, barrier) -> None:
    from reidctl.engine.bench import closed_loop  # the parent's module, imported in this process
    from reidctl.engine.detector import create_detector

    try:
        detector = create_detector(config, backend, warn=lambda message: None)
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


class ClientProcesses:
    """``count`` processes, each with its own runner of ``backend`` (connected once), that run closed loops on
    command; a context manager that stops them."""

    def __init__(self, config, backend: str, frames: Sequence[np.ndarray], count: int):
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads and a GPU context
        self.count = count
        self._results = context.Queue()
        self._barrier = context.Barrier(count + 1)
        self._commands = [context.Queue() for _ in range(count)]
        self._processes = [
            context.Process(target=_client_main, args=(config, backend, list(frames), commands, self._results,
                                                       self._barrier), name=f"reidctl-client-{i}", daemon=True)
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
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
