"""`reidctl bench`'s multi-stream measurements: N cameras in a closed loop (sequential, detect's pipeline, concurrent
client threads) and in an open loop (cameras at F FPS each, through detect's pipeline in real time or client threads
on their own clocks). bench.py runs them per backend; capacity.py reads detect's pipeline runs as bench records.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from reidctl.apps.bench_report import BenchSettings, CameraStats, StreamResult
from reidctl.apps.clients import ClientProcesses, Tick, cameras_together, closed_loop
from reidctl.apps.pipeline import DetectOptions, DetectResult, OutputRequest, run_detect
from reidctl.apps.stats import LatencySummary
from reidctl.config import Config
from reidctl.core.detector import Detector, DetectorPool
from reidctl.errors import ReidctlError, Terminated
from reidctl.io.sources import CameraSpec, MemorySource


def measure_sequential(
    detector: Detector, frames: Sequence[np.ndarray], cameras: int, settings: BenchSettings, tick: Tick
) -> StreamResult:
    """Round-robin over the cameras on one thread. A camera's next frame is submitted when its result returns,
    so in steady state it waits while every other camera is served: latency ~ cameras x one frame's time."""
    warmup, iters = settings.warmup, settings.iters
    submitted = [time.perf_counter()] * cameras
    samples: list[float] = []
    start = submitted[0]
    for request in range(warmup + iters):
        if request == warmup:
            start = time.perf_counter()
        camera = request % cameras
        detector.detect(frames[request % len(frames)])
        done = time.perf_counter()
        if request >= warmup:
            samples.append(done - submitted[camera])
        submitted[camera] = done
        tick()
    wall = time.perf_counter() - start
    return StreamResult("sequential", cameras, iters, wall, iters / wall, LatencySummary.from_samples(samples))


def split_frames(total: int, cameras: int) -> list[int]:
    """``total`` frames shared out over the cameras, the first ones taking one more where it does not divide."""
    return [total // cameras + (camera < total % cameras) for camera in range(cameras)]


def play_in_pipeline(
    config: Config,
    detector: Detector | DetectorPool,
    frames: Sequence[np.ndarray],
    counts: Sequence[int],
    max_batch: int | None,
    tick: Tick,
    fps: float | None = None,
) -> DetectResult:
    """`reidctl detect`'s pipeline, no output, on ``frames`` played as one camera per count (``counts[i]`` frames
    each): as fast as the batches take them, or with ``fps`` in real time at that rate. A stop (Ctrl-C, SIGTERM)
    raises again once the run has ended; a failed run is an error."""
    sources = [MemorySource(frames, count, phase=camera, fps=fps) for camera, count in enumerate(counts)]
    specs = [CameraSpec(f"cam{camera + 1}", source.description) for camera, source in enumerate(sources)]
    options = DetectOptions(realtime=fps is not None, max_batch=max_batch)
    ticked = 0

    def advance(statistics: dict) -> None:
        nonlocal ticked
        for _ in range(statistics["frames"] - ticked):
            tick()
        ticked = statistics["frames"]

    bench_load = detector.load  # run_detect counts the load of its own frames: added to the bench's afterwards
    try:
        done = run_detect(config, specs, OutputRequest(no_output=True), options, on_update=advance,
                          detector=detector, sources=sources)  # fmt: skip
    finally:
        run_load, detector.load = detector.load, bench_load
    bench_load.merge(run_load)
    advance(done.summary)
    if done.stopped in ("interrupted", "terminated"):
        raise Terminated() if done.stopped == "terminated" else KeyboardInterrupt()
    if done.failed:
        raise ReidctlError(f"detect's pipeline failed: {done.stopped}")
    return done


def pipeline_result(done: DetectResult, fps: float | None = None, latency_ms: float | None = None) -> StreamResult:
    """A `run_detect` run as a bench record (mode "pipeline"): a closed loop, or with ``fps`` an open-loop run of
    cameras at that rate, a frame answered later than ``latency_ms`` being late. Latency runs from the moment a
    camera's reader had the frame."""
    summary = done.summary
    latencies = [seconds for camera in done.latencies.values() for seconds in camera]
    wall = summary["wall_seconds"]
    sizes = {int(size): count for size, count in (summary["batch_sizes"] or {}).items()}
    result = StreamResult(
        "pipeline", len(summary["cameras"]), len(latencies), wall, summary["frames"] / wall if wall else 0.0,
        LatencySummary.from_samples(latencies) if latencies else NOTHING_SERVED, sizes or None,
        per_device=summary.get("per_device"),
    )  # fmt: skip
    if fps is None:
        return result
    budget_s = latency_ms / 1000.0
    result.per_camera = [
        CameraStats(
            camera=index,
            due=camera["frames"] + camera["dropped"],  # every frame the camera played: detected or dropped
            served=camera["frames"],
            dropped=camera["dropped"],
            late=sum(seconds > budget_s for seconds in done.latencies[camera["name"]]),
            achieved_fps=camera["fps"] or 0.0,
            p50_ms=camera["latency_ms"]["p50"],
            p95_ms=camera["latency_ms"]["p95"],
            p99_ms=camera["latency_ms"]["p99"],
        )
        for index, camera in enumerate(summary["cameras"])
    ]
    result.load, result.fps_per_camera, result.latency_budget_ms = "open", fps, latency_ms
    result.dropped = summary["dropped"]
    result.late = sum(camera.late for camera in result.per_camera)
    return result


def measure_pipeline(
    detector: Detector | DetectorPool,
    frames: Sequence[np.ndarray],
    cameras: int,
    settings: BenchSettings,
    tick: Tick,
    config: Config,
) -> StreamResult:
    """``cameras`` cameras through detect's pipeline as fast as it takes their frames: the warm-up frames in a first
    run, unrecorded, then the measured frames (each run also starts with detect's own warm-up of one-off costs, e.g.
    a CUDA graph per batch size)."""
    if settings.warmup:
        play_in_pipeline(config, detector, frames, split_frames(settings.warmup, cameras), settings.max_batch, tick)
    done = play_in_pipeline(config, detector, frames, split_frames(settings.iters, cameras), settings.max_batch, tick)
    return pipeline_result(done)


def _settled_batch_counts(detector: Detector) -> dict[int, int] | None:
    """The server's batch counts once they stop changing: Triton's statistics (a TensorRT model's batches) are
    updated just after the responses go out, so a read right after the last response can miss the last batches."""
    deadline = time.monotonic() + 2.0
    counts = detector.runner.batch_counts()
    while counts is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        again = detector.runner.batch_counts()
        if again == counts:
            break
        counts = again
    return counts


def _batches_since(before: dict[int, int] | None, after: dict[int, int] | None) -> dict[int, int] | None:
    if before is None or after is None:
        return None
    return {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}


def measure_concurrent(
    detector: Detector,
    frames: Sequence[np.ndarray],
    cameras: int,
    settings: BenchSettings,
    tick: Tick,
    clients: ClientProcesses | None = None,
) -> StreamResult:
    """Client threads call the (thread-safe) runner at once, in this process or spread over ``clients``; the server
    forms the batches (``runner.batch_counts``: the sizes it ran)."""

    def run(requests: int) -> tuple[list[float], float]:
        if clients is None:
            return closed_loop(detector.detect, frames, cameras, requests, tick)
        latencies, wall = clients.closed_loop(cameras, requests)
        for _ in latencies:
            tick()
        return latencies, wall

    run(settings.warmup)
    before = _settled_batch_counts(detector)
    latencies, wall = run(settings.iters)
    sizes = _batches_since(before, _settled_batch_counts(detector))
    summary = LatencySummary.from_samples(latencies)
    return StreamResult("concurrent", cameras, len(latencies), wall, len(latencies) / wall, summary, sizes)


OPEN_LOOP_WARMUP_S = 0.5  # each open-loop run starts with this much unrecorded load (the first batches)
REMOTE_WARMUP_ROUNDS = 5  # closed-loop requests per camera a server gets before an open-loop run


@dataclass
class OpenLoopLoad:
    """Cameras on their own clock: ``fps`` each, measured for ``seconds`` after ``warmup_s`` of the same load."""

    cameras: int
    fps: float
    seconds: float
    latency_ms: float  # budget: answered later than this is late
    # Each send time moves by a uniform +-jitter/2 of the period (seeded per camera); client threads only: detect's
    # readers play at a fixed rate.
    jitter: float = 0.0
    warmup_s: float = OPEN_LOOP_WARMUP_S


def _camera_clock(load: OpenLoopLoad, camera: int, start: float):
    """The send times of one camera: a fixed period from a phase of its own (cameras spread over one period)."""
    period = 1.0 / load.fps
    rng = random.Random(camera)
    base = start + period * camera / load.cameras
    index = 0
    while True:
        shift = rng.uniform(-load.jitter, load.jitter) * period / 2 if load.jitter else 0.0
        yield base + index * period + shift
        index += 1


def _camera_stats(
    camera: int, due: int, latencies: list[float], lags: list[float], dropped: int, load: OpenLoopLoad
) -> CameraStats:
    budget_s = load.latency_ms / 1000.0
    summary = LatencySummary.from_samples(latencies) if latencies else None
    return CameraStats(
        camera=camera,
        due=due,
        served=len(latencies),
        dropped=dropped,
        late=sum(latency > budget_s for latency in latencies),
        achieved_fps=len(latencies) / load.seconds,
        p50_ms=summary.p50_ms if summary else None,
        p95_ms=summary.p95_ms if summary else None,
        p99_ms=summary.p99_ms if summary else None,
        send_lag_p99_ms=float(np.percentile(lags, 99)) * 1000.0 if lags else 0.0,
    )


def open_loop(
    serve: Callable[[np.ndarray], object], frames: Sequence[np.ndarray], load: OpenLoopLoad, tick: Tick = lambda: None
) -> tuple[list[CameraStats], list[float]]:
    """Each camera thread sends a frame at each tick of its clock and waits for the result; a tick that comes while
    its frame is still in flight drops that frame (a camera does not queue). Latency runs from the frame's send
    time (its schedule, not the moment the thread got to it), so a slow client shows in it too.

    Frames whose send time falls in the measured window (after the warm-up, ``seconds`` long) are recorded.
    Returns each camera's statistics and every recorded latency (seconds).
    """
    stop = threading.Event()  # a failing camera stops the others

    def camera(index: int) -> tuple[CameraStats, list[float]]:
        start = epoch[0]
        window_start, window_end = start + load.warmup_s, start + load.warmup_s + load.seconds
        clock = _camera_clock(load, index, start)
        latencies, lags, dropped, due_in_window, sent_count = [], [], 0, 0, 0
        send_at = next(clock)
        try:
            while send_at < window_end and not stop.is_set():
                wait = send_at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sent = time.perf_counter()
                serve(frames[(index + sent_count * load.cameras) % len(frames)])
                sent_count += 1
                done = time.perf_counter()
                recorded = send_at >= window_start
                if recorded:
                    due_in_window += 1
                    latencies.append(done - send_at)
                    lags.append(sent - send_at)
                tick()
                send_at = next(clock)
                while send_at < done and send_at < window_end:  # due while the last frame was in flight: dropped
                    if send_at >= window_start:
                        due_in_window += 1
                        dropped += 1
                    send_at = next(clock)
        except BaseException:
            stop.set()
            raise
        return _camera_stats(index, due_in_window, latencies, lags, dropped, load), latencies

    epoch = [0.0]

    def set_epoch() -> None:  # every camera's clock starts from the same instant
        epoch[0] = time.perf_counter() + 0.01

    # Ctrl-C: the cameras stop too, instead of running their window out
    results, _ = cameras_together(camera, load.cameras, stop.set, before_start=set_epoch)
    return [stats for stats, _ in results], [sample for _, samples in results for sample in samples]


def run_open_loop(
    config: Config,
    detector: Detector | DetectorPool,
    frames: Sequence[np.ndarray],
    load: OpenLoopLoad,
    max_batch: int | None = None,
    tick: Tick = lambda: None,
) -> StreamResult:
    """One open-loop point: ``load.cameras`` cameras at ``load.fps`` each, for ``load.seconds`` after
    ``load.warmup_s`` of the same load, unrecorded. In process: detect's pipeline with the cameras in real time
    (``load.jitter`` does not apply: they play at their rate, as detect's do). Through a server: client threads on
    their own clocks, after a few closed-loop rounds from as many threads (its one-off costs at a new concurrency,
    e.g. the python backend growing its shared memory for larger batches, must not count as dropped frames)."""
    if not detector.runner.batches_remotely:

        def frames_in(seconds: float) -> list[int]:  # each camera's
            return [round(seconds * load.fps)] * load.cameras

        if load.warmup_s:
            play_in_pipeline(config, detector, frames, frames_in(load.warmup_s), max_batch, tick, load.fps)
        done = play_in_pipeline(config, detector, frames, frames_in(load.seconds), max_batch, tick, load.fps)
        return pipeline_result(done, load.fps, load.latency_ms)
    allow_measured_latency(detector, frames[0], load.cameras)
    closed_loop(detector.detect, frames, load.cameras, REMOTE_WARMUP_ROUNDS * load.cameras, lambda: None)
    before = _settled_batch_counts(detector)
    cameras, latencies = open_loop(detector.detect, frames, load, tick)
    # The warm-up's batches included: the open loop has no idle point between the two.
    sizes = _batches_since(before, _settled_batch_counts(detector))
    summary = LatencySummary.from_samples(latencies) if latencies else NOTHING_SERVED
    return StreamResult(
        "concurrent",
        load.cameras,
        len(latencies),
        load.seconds,
        len(latencies) / load.seconds,
        summary,
        sizes or None,
        load="open",
        fps_per_camera=load.fps,
        latency_budget_ms=load.latency_ms,
        jitter=load.jitter,
        dropped=sum(c.dropped for c in cameras),
        late=sum(c.late for c in cameras),
        per_camera=cameras,
    )


# A run in which no frame came back in the window (every one dropped): infinite latency, so it never passes.
NOTHING_SERVED = LatencySummary(0, math.inf, math.inf, math.inf, 0.0, math.inf, math.inf, math.inf, 0.0)


def allow_measured_latency(detector: Detector, frame: np.ndarray, cameras: int) -> None:
    """Time one request and let a remote runner's requests take as long as this machine needs.

    A remote runner's timeout (detection.triton.timeout) is there to catch a hung server, but a fixed value also
    fails a slow machine (YOLOX-X on a CPU: ~7 s a frame, and N cameras in a closed loop queue up to N requests at
    the server). The first request (which the runner lets take long: it may carry the server's one-off costs) is
    an upper bound of one request's time: the runner keeps its configured timeout unless ``cameras`` x that time,
    with margin, is longer.
    """
    start = time.perf_counter()
    detector.detect(frame)
    if detector.runner.batches_remotely:  # in-process runners have no request timeout
        detector.runner.allow_latency(cameras * (time.perf_counter() - start))
