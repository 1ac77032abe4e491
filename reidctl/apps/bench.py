"""`reidctl bench`: every backend measured on this machine with the user's model and frames.

Per backend:
  single stream   one frame in host memory -> (N, 7) on the host, back to back: end to end, then a second pass
                  with per-stage timing (it synchronises the GPU between stages, so it is not the end-to-end figure);
  multi stream    N cameras in a closed loop (each camera's next frame follows its last one): saturation,
                  "sequential"  one thread serves the cameras round-robin, one frame at a time (the reference's mode);
                  "pipeline"    `reidctl detect`'s pipeline (in-process runners): the frames, held in memory, played
                                as N cameras (each from a frame of its own) by its readers, which letterbox them
                                (nothing is decoded), its batch loops and its output stage with no output;
                  "concurrent"  N client threads call the runner at once and the server batches (remote runners);
  open loop       N cameras at F FPS each (``--fps``): in process detect's pipeline as above with the cameras in real
                  time (``detect --realtime``: a frame that no batch took before the camera's next one is dropped);
                  through a server, client threads on their own clocks (a camera whose previous frame is still in
                  flight drops the next one): achieved FPS, latency, frames late and frames dropped (nothing queues
                  without bound);
  parity          (``--parity``, parity.py) every backend and precision's detections against PyTorch fp32;
  memory          the runner's peak accelerator memory.
A backend that cannot run here is listed with the reason; one that fails is recorded as failed and the rest still run.
The records and their JSON live in bench_report.py, the plot in bench_plot.py; this module measures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reidctl.config import Config, to_dict
from reidctl.apps.clients import ClientProcesses, Tick, closed_loop
from reidctl.apps.bench_report import (
    DEFAULT_BENCH_PATH,
    BackendResult,
    BenchReport,
    BenchSettings,
    CameraStats,
    StreamResult,
    plot_path_for,
)
from reidctl.core.detector import (
    Detector,
    DetectorPool,
    StageTimes,
    available_backends,
    create_detector,
    get_backend,
    registered_backends,
)
from reidctl.core.device import gpu_description, resolve_devices
from reidctl.apps.pipeline import DetectOptions, DetectResult, OutputRequest, run_detect
from reidctl.apps.stats import LatencySummary
from reidctl.errors import BackendUnavailable, ReidctlError, Terminated, describe_error, first_line
from reidctl.io.atomic import check_output_path
from reidctl.io.sources import CameraSpec, MemorySource, open_source
from reidctl.io.synthetic import synthetic_frame

MAX_SOURCE_FRAMES = 64  # frames held in host memory and cycled; decoding never counts in a latency
SYNTHETIC_FRAMES = 16
STAGES = tuple(f.name for f in dataclasses.fields(StageTimes))
# Told each backend's progress: (backend, the phase under way, requests done, requests planned).
OnProgress = Callable[[str, str, int, int], None]


def parse_backends(text: str) -> tuple[list[str], bool]:
    """'all' -> every registered backend; else a comma list of known names (unknown -> error).

    Also returns whether the backends were named: a named backend that cannot be measured is an error, while
    'all' merely lists the backends this machine lacks (see BenchReport.not_measured).
    """
    if text.strip().lower() == "all":
        return list(available_backends()), False
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ReidctlError("--backends needs 'all' or a comma-separated list of backend names")
    return list(dict.fromkeys(get_backend(n).name for n in names)), True


def load_frames(settings: BenchSettings, test_size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """Frames to cycle through, decoded up front, and a description of where they came from."""
    if settings.source is None:
        size = settings.frame_size or test_size
        return [synthetic_frame(i, size) for i in range(SYNTHETIC_FRAMES)], f"synthetic {size[0]}x{size[1]}"
    with open_source(settings.source) as source:
        frames = [frame.image for _, frame in zip(range(MAX_SOURCE_FRAMES), source)]
    if not frames:
        raise ReidctlError(f"no frames could be read from {settings.source}")
    return frames, settings.source


def environment(devices: Sequence[torch.device]) -> dict:
    """The machine a report was measured on; ``devices``: each one a runner ran on (the first one's GPU named)."""
    return {
        "gpu": gpu_description(devices[0]),
        "device": ",".join(str(device) for device in devices),
        "devices": [str(device) for device in devices],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": installed_versions(),
    }


def installed_versions() -> dict[str, str | None]:
    """The version of each backend's package, recorded with every result (None: not installed)."""
    return {backend.packages[0]: _installed_version(backend.packages)
            for backend in registered_backends().values() if backend.packages}


def _installed_version(distributions: Sequence[str]) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# --- measurements -----------------------------------------------------------------------------------------------


def measure_single(
    detector: Detector, frames: Sequence[np.ndarray], warmup: int, iters: int, tick: Tick
) -> LatencySummary:
    for i in range(warmup):
        detector.detect(frames[i % len(frames)])
        tick()
    samples = []
    for i in range(iters):
        start = time.perf_counter()
        detector.detect(frames[i % len(frames)])
        samples.append(time.perf_counter() - start)
        tick()
    return LatencySummary.from_samples(samples)


def measure_stages(
    detector: Detector, frames: Sequence[np.ndarray], iters: int, tick: Tick
) -> dict[str, LatencySummary]:
    detector.stage_times = times = StageTimes()
    try:
        for i in range(iters):
            detector.detect(frames[i % len(frames)])
            tick()
    finally:
        detector.stage_times = None
    return {stage: LatencySummary.from_samples(getattr(times, stage)) for stage in STAGES}


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
    barrier = threading.Barrier(load.cameras + 1)
    stop = threading.Event()  # a failing camera stops the others

    def camera(index: int) -> tuple[CameraStats, list[float]]:
        barrier.wait()
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
    with ThreadPoolExecutor(max_workers=load.cameras, thread_name_prefix="camera") as pool:
        futures = [pool.submit(camera, i) for i in range(load.cameras)]
        epoch[0] = time.perf_counter() + 0.01  # every camera's clock starts from the same instant
        barrier.wait()
        try:
            results = [future.result() for future in futures]
        except BaseException:  # Ctrl-C: the cameras stop too, instead of running their window out
            stop.set()
            raise
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


def stream_modes(detector: Detector) -> tuple[str, ...]:
    return ("concurrent",) if detector.runner.batches_remotely else ("sequential", "pipeline")


def planned_requests(settings: BenchSettings, modes: Sequence[str]) -> int:
    single = 1 + settings.warmup + 2 * settings.iters  # probe, end to end (with warm-up) + staged pass
    closed = len(modes) * (settings.warmup + settings.iters) if settings.saturation else 0
    per_camera_open = settings.fps * (settings.seconds + OPEN_LOOP_WARMUP_S) if settings.fps else 0
    return single + sum(closed + round(cameras * per_camera_open) for cameras in settings.cameras)


def open_loop_load(settings: BenchSettings, cameras: int) -> OpenLoopLoad:
    return OpenLoopLoad(cameras, settings.fps, settings.seconds, settings.latency_ms, settings.jitter)


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


class _Meter:
    """One backend's progress, told to ``on_progress`` at each phase and each answered request (camera threads tick
    it at once)."""

    def __init__(self, backend: str, total: int, on_progress: OnProgress | None):
        self.backend, self.total, self.on_progress = backend, total, on_progress
        self.phase, self.done = "", 0
        self._lock = threading.Lock()

    def start(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self._tell()

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            self._tell()

    def _tell(self) -> None:
        if self.on_progress:
            self.on_progress(self.backend, self.phase, self.done, self.total)


def _measure_backend(
    config: Config,
    result: BackendResult,
    detector: Detector,
    frames: Sequence[np.ndarray],
    settings: BenchSettings,
    on_progress: OnProgress | None,
    clients: ClientProcesses | None = None,
) -> None:
    """Fill ``result`` step by step, so that a failure keeps what was measured before it."""
    modes = stream_modes(detector)
    measures = {
        "sequential": measure_sequential,
        "pipeline": functools.partial(measure_pipeline, config=config),
        "concurrent": functools.partial(measure_concurrent, clients=clients),
    }
    meter = _Meter(result.name, planned_requests(settings, modes), on_progress)
    tick = meter.tick
    meter.start("single stream")
    result.runner = detector.describe()
    allow_measured_latency(detector, frames[0], max(settings.cameras))
    tick()
    result.single_stream = measure_single(detector, frames, settings.warmup, settings.iters, tick)
    meter.start("stages")
    result.stages = measure_stages(detector, frames, settings.iters, tick)
    for cameras in settings.cameras:
        plural = "s" if cameras > 1 else ""
        for mode in modes if settings.saturation else ():
            meter.start(f"{mode}, {cameras} camera{plural}")
            result.multi_stream.append(measures[mode](detector, frames, cameras, settings, tick))
        if settings.fps:
            meter.start(f"open loop, {cameras} camera{plural} at {settings.fps:g} FPS")
            load = open_loop_load(settings, cameras)
            result.multi_stream.append(run_open_loop(config, detector, frames, load, settings.max_batch, tick))
    result.peak_memory_bytes = detector.peak_memory_bytes()
    result.runner = detector.describe()  # again: what the runner counted (e.g. per Triton server) is known now
    load = detector.load
    result.detection_load = {"candidates_per_frame": load.candidates_per_frame, "kept_per_frame": load.kept_per_frame}
    meter.start("done")


def bench_backend(
    config: Config,
    name: str,
    frames: Sequence[np.ndarray],
    settings: BenchSettings,
    on_progress: OnProgress | None,
    devices: Sequence[torch.device],
    into: list[BackendResult],
) -> None:
    """Measure backend ``name`` into a result appended to ``into`` first: a stop (Ctrl-C, SIGTERM) keeps what was
    measured before it."""
    reason = get_backend(name).availability()
    if reason:
        into.append(BackendResult(name, "unavailable", reason))
        return
    result = BackendResult(name, "ok")
    into.append(result)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.init()  # the allocator's statistics exist only once CUDA is initialised
            torch.cuda.reset_peak_memory_stats(device)  # each backend's peak, not the process's so far
    try:
        with create_detector(config, name) as detector, contextlib.ExitStack() as stack:
            clients = None
            if detector.runner.batches_remotely and settings.client_processes > 1 and settings.saturation:
                clients = stack.enter_context(ClientProcesses(config, name, frames, settings.client_processes,
                                                              get_backend(name).frame_sender))
            _measure_backend(config, result, detector, frames, settings, on_progress, clients)
    except BackendUnavailable as exc:  # e.g. the server is not reachable
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:  # noqa: BLE001  one backend's failure must not cost the others' results
        result.status, result.reason = "failed", first_line(describe_error(exc))
    except KeyboardInterrupt as exc:
        result.status, result.reason = "failed", f"{stop_name(exc)} while it was measured"
        raise


def stop_name(stop: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(stop, Terminated) else "interrupted"


def run_bench(config: Config, settings: BenchSettings, on_progress: OnProgress | None = None) -> BenchReport:
    """Every backend of ``settings`` measured, each one's progress told to ``on_progress``."""
    settings.validate()
    devices = resolve_devices(config.detection.device)
    frames, frames_from = load_frames(settings, config.detection.input_size)
    results: list[BackendResult] = []
    stopped = None
    try:
        for name in settings.backends:
            bench_backend(config, name, frames, settings, on_progress, devices, results)
    except KeyboardInterrupt as exc:  # what was measured is kept, the report marked partial
        stopped = stop_name(exc)
    parity = []
    if settings.parity and not stopped:
        from reidctl.apps.parity import run_parity

        tolerances = settings.parity_tolerance, settings.parity_score_tolerance
        parity = run_parity(config, settings.backends, frames, *tolerances)
    return BenchReport(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=environment(devices),
        settings=dataclasses.asdict(settings) | {"frames": frames_from, "frame_count": len(frames)},
        config=to_dict(config),
        backends=results,
        parity=parity,
        stopped=stopped,
    )


def benchmark(
    config: Config, settings: BenchSettings, output: Path = DEFAULT_BENCH_PATH, on_progress: OnProgress | None = None
) -> tuple[BenchReport, Path]:
    """Measure, then write the JSON and the plot: what `reidctl bench` (and `make demo`) runs."""
    for path in (output, plot_path_for(output)):
        check_output_path(path)  # fail before the measurements, not after them
    report = run_bench(config, settings, on_progress)
    from reidctl.apps.bench_plot import write_report  # matplotlib: only when a report is written

    return report, write_report(report, output)
