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
The records and their JSON live in bench_report.py, the plot in bench_plot.py, the multi-stream and open-loop
measurements in bench_streams.py; this module measures a single stream and runs each backend's measurements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from reidctl.config import Config, to_dict
from reidctl.apps.clients import ClientProcesses, Tick
from reidctl.apps.bench_streams import (
    OPEN_LOOP_WARMUP_S,
    OpenLoopLoad,
    allow_measured_latency,
    measure_concurrent,
    measure_pipeline,
    measure_sequential,
    run_open_loop,
)
from reidctl.apps.bench_report import (
    DEFAULT_BENCH_PATH,
    BackendResult,
    BenchReport,
    BenchSettings,
    plot_path_for,
)
from reidctl.core.detector import Detector, StageTimes, create_detector
from reidctl.core.registry import available_backends, get_backend, registered_backends
from reidctl.core.device import gpu_description, resolve_devices
from reidctl.apps.stats import LatencySummary
from reidctl.errors import BackendUnavailable, ReidctlError, Terminated, describe_error, first_line
from reidctl.io.atomic import check_output_path
from reidctl.io.sources import open_source
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


def load_frames(settings: BenchSettings, input_size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """Frames to cycle through, decoded up front, and a description of where they came from."""
    if settings.source is None:
        size = settings.frame_size or input_size
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


def stream_modes(detector: Detector) -> tuple[str, ...]:
    return ("concurrent",) if detector.runner.batches_remotely else ("sequential", "pipeline")


def planned_requests(settings: BenchSettings, modes: Sequence[str]) -> int:
    single = 1 + settings.warmup + 2 * settings.iters  # probe, end to end (with warm-up) + staged pass
    closed = len(modes) * (settings.warmup + settings.iters) if settings.saturation else 0
    per_camera_open = settings.fps * (settings.seconds + OPEN_LOOP_WARMUP_S) if settings.fps else 0
    return single + sum(closed + round(cameras * per_camera_open) for cameras in settings.cameras)


def open_loop_load(settings: BenchSettings, cameras: int) -> OpenLoopLoad:
    return OpenLoopLoad(cameras, settings.fps, settings.seconds, settings.latency_ms, settings.jitter)


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
