"""`reidctl bench`: every backend measured on this machine with the user's model and frames.

Per backend:
  single stream   one frame in host memory -> (N, 7) on the host, back to back: end to end, then a second pass
                  with per-stage timing (it synchronises the GPU between stages, so it is not the end-to-end figure);
  multi stream    N cameras in a closed loop (each submits its next frame when its result is back):
                  "sequential"  one thread serves the cameras round-robin, one frame at a time (the reference's mode);
                  "batched"     N camera threads share an in-process MicroBatcher (in-process runners);
                  "concurrent"  N client threads call the runner at once and the server batches (remote runners);
  memory          the runner's peak accelerator memory.
A backend that cannot run here is listed with the reason; one that fails is recorded as failed and the rest still run.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from reidctl.config import Config, to_dict
from reidctl.engine.batcher import MicroBatcher
from reidctl.engine.detector import Detector, StageTimes, available_backends, create_detector, get_backend
from reidctl.engine.device import gpu_description, resolve_device
from reidctl.engine.stats import LatencySummary
from reidctl.errors import BackendUnavailable, ReidctlError, first_line
from reidctl.io.atomic import atomic_path, ensure_writable_dir, write_text_atomic
from reidctl.io.sources import open_source
from reidctl.io.synthetic import synthetic_frame

BENCH_SCHEMA_VERSION = 1
DEFAULT_BENCH_PATH = Path("runs/bench/bench.json")
MAX_SOURCE_FRAMES = 64  # frames held in host memory and cycled; decoding never counts in a latency
SYNTHETIC_FRAMES = 16
STAGES = tuple(f.name for f in dataclasses.fields(StageTimes))
# Package versions recorded with every result: the distributions each backend may come from.
VERSIONED_PACKAGES = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    "tritonclient": ("tritonclient",),
}

Tick = Callable[[], None]


@dataclass
class BenchSettings:
    backends: list[str]
    iters: int = 1000
    warmup: int = 100
    cameras: list[int] = field(default_factory=lambda: [1, 4])
    source: str | None = None  # video, image or image folder; None: synthetic frames
    frame_size: tuple[int, int] | None = None  # synthetic frame (height, width); None: the test size
    max_batch: int = 8  # in-process micro-batcher
    max_delay_ms: float = 0.0  # greedy: batch what is waiting, never wait for more

    def validate(self) -> BenchSettings:
        for name in ("iters", "warmup", "max_batch"):
            if getattr(self, name) <= 0:
                raise ReidctlError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.cameras or any(c <= 0 for c in self.cameras):
            raise ReidctlError(f"--cameras must be positive camera counts, got {self.cameras}")
        if self.max_delay_ms < 0:
            raise ReidctlError(f"--max-delay-ms must be >= 0, got {self.max_delay_ms}")
        if self.frame_size is not None and (self.source is not None or min(self.frame_size) <= 0):
            raise ReidctlError("--frame-size sets the size of synthetic frames: give positive sizes and no --source")
        return self


def parse_backends(text: str) -> list[str]:
    """'all' -> every registered backend; else a comma list of known names (unknown -> error)."""
    if text.strip().lower() == "all":
        return list(available_backends())
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ReidctlError("--backends needs 'all' or a comma-separated list of backend names")
    return list(dict.fromkeys(get_backend(n).name for n in names))


def parse_cameras(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16] (sorted, no repeats); every count must be a positive integer."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'") from None
    if not counts or any(c <= 0 for c in counts):
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'")
    return sorted(set(counts))


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


@dataclass
class StreamResult:
    mode: str  # sequential | batched | concurrent
    cameras: int
    requests: int
    wall_s: float
    throughput_fps: float  # all cameras together
    latency: LatencySummary  # per request: submit -> result
    batch_sizes: dict[int, int] | None = None  # batch size -> batches run (micro-batcher, or the server's batcher)

    @property
    def mean_batch(self) -> float | None:
        if not self.batch_sizes:
            return None
        return sum(size * count for size, count in self.batch_sizes.items()) / sum(self.batch_sizes.values())

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self) | {"latency": self.latency.to_dict(), "mean_batch": self.mean_batch}
        if self.batch_sizes is not None:
            data["batch_sizes"] = {str(size): count for size, count in sorted(self.batch_sizes.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StreamResult:
        sizes = data.get("batch_sizes")
        return cls(
            mode=data["mode"],
            cameras=int(data["cameras"]),
            requests=int(data["requests"]),
            wall_s=float(data["wall_s"]),
            throughput_fps=float(data["throughput_fps"]),
            latency=LatencySummary.from_dict(data["latency"]),
            batch_sizes={int(k): int(v) for k, v in sizes.items()} if sizes is not None else None,
        )


@dataclass
class BackendResult:
    name: str
    status: str  # ok | unavailable | failed
    reason: str | None = None
    runner: dict = field(default_factory=dict)
    single_stream: LatencySummary | None = None
    stages: dict[str, LatencySummary] = field(default_factory=dict)
    multi_stream: list[StreamResult] = field(default_factory=list)
    peak_memory_bytes: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "runner": self.runner,
            "single_stream": self.single_stream.to_dict() if self.single_stream else None,
            "stages": {stage: summary.to_dict() for stage, summary in self.stages.items()},
            "multi_stream": [stream.to_dict() for stream in self.multi_stream],
            "peak_memory_bytes": self.peak_memory_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BackendResult:
        return cls(
            name=data["name"],
            status=data["status"],
            reason=data.get("reason"),
            runner=data.get("runner") or {},
            single_stream=LatencySummary.from_dict(data["single_stream"]) if data.get("single_stream") else None,
            stages={stage: LatencySummary.from_dict(s) for stage, s in (data.get("stages") or {}).items()},
            multi_stream=[StreamResult.from_dict(s) for s in data.get("multi_stream") or []],
            peak_memory_bytes=data.get("peak_memory_bytes"),
        )


@dataclass
class BenchReport:
    created: str
    environment: dict
    settings: dict
    config: dict
    backends: list[BackendResult]
    schema_version: int = BENCH_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment,
            "settings": self.settings,
            "config": self.config,
            "backends": [backend.to_dict() for backend in self.backends],
        }

    @classmethod
    def from_dict(cls, data: dict) -> BenchReport:
        return cls(
            created=data["created"],
            environment=data["environment"],
            settings=data["settings"],
            config=data["config"],
            backends=[BackendResult.from_dict(b) for b in data["backends"]],
            schema_version=data["schema_version"],
        )


def load_report(path: Path) -> BenchReport:
    """A bench JSON written by this version's schema; anything else is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReidctlError(f"bench file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReidctlError(f"bench file not readable: {path} ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise ReidctlError(f"bench file {path} is not valid JSON (line {exc.lineno})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != BENCH_SCHEMA_VERSION:
        raise ReidctlError(
            f"bench file {path} has schema_version {version!r}; this reidctl reads {BENCH_SCHEMA_VERSION}: rerun `reidctl bench`"
        )
    try:
        return BenchReport.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReidctlError(f"bench file {path} is malformed ({exc.__class__.__name__}: {exc})") from None


def environment(device: torch.device) -> dict:
    return {
        "gpu": gpu_description(device),
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {package: _installed_version(dists) for package, dists in VERSIONED_PACKAGES.items()},
    }


def _installed_version(distributions: Sequence[str]) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# --- measurements -----------------------------------------------------------------------------------------------


def measure_single(detector: Detector, frames: Sequence[np.ndarray], warmup: int, iters: int, tick: Tick) -> LatencySummary:
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


def measure_stages(detector: Detector, frames: Sequence[np.ndarray], iters: int, tick: Tick) -> dict[str, LatencySummary]:
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


def closed_loop(
    serve: Callable[[np.ndarray], object], frames: Sequence[np.ndarray], cameras: int, requests: int, tick: Tick
) -> tuple[list[float], float]:
    """``cameras`` threads each submit a frame, wait for its result, and repeat until ``requests`` are served.

    Returns every request's latency (seconds) and the wall time from the common start to the last result.
    """
    tickets = _Tickets(requests)
    barrier = threading.Barrier(cameras + 1)

    def camera(index: int) -> list[float]:
        barrier.wait()
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

    with ThreadPoolExecutor(max_workers=cameras, thread_name_prefix="camera") as pool:
        futures = [pool.submit(camera, i) for i in range(cameras)]
        barrier.wait()
        start = time.perf_counter()
        latencies = [sample for future in futures for sample in future.result()]
        wall = time.perf_counter() - start
    return latencies, wall


def measure_batched(
    detector: Detector, frames: Sequence[np.ndarray], cameras: int, settings: BenchSettings, tick: Tick
) -> StreamResult:
    with MicroBatcher(detector.detect_batch, settings.max_batch, settings.max_delay_ms) as batcher:
        # Every batch size the run can form is run once first: one-off costs (e.g. CUDA-graph capture) stay out.
        for size in range(2, min(settings.max_batch, cameras) + 1):
            detector.detect_batch([frames[i % len(frames)] for i in range(size)])
        serve = lambda frame: batcher.submit(frame).result()  # noqa: E731
        closed_loop(serve, frames, cameras, settings.warmup, tick)
        batcher.batch_sizes.clear()  # the worker is idle: every warm-up future has been answered
        latencies, wall = closed_loop(serve, frames, cameras, settings.iters, tick)
        sizes = dict(Counter(batcher.batch_sizes))
    return StreamResult("batched", cameras, len(latencies), wall, len(latencies) / wall, LatencySummary.from_samples(latencies), sizes)


def _settled_batch_counts(detector: Detector) -> dict[int, int] | None:
    """The server's batch counts once they stop changing: its statistics are updated just after the responses
    go out, so a read right after the last response can miss the last batches."""
    deadline = time.monotonic() + 2.0
    counts = detector.runner.batch_counts()
    while counts is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        again = detector.runner.batch_counts()
        if again == counts:
            break
        counts = again
    return counts


def measure_concurrent(
    detector: Detector, frames: Sequence[np.ndarray], cameras: int, settings: BenchSettings, tick: Tick
) -> StreamResult:
    """Client threads call the (thread-safe) runner at once; the server forms the batches (read from its statistics)."""
    closed_loop(detector.detect, frames, cameras, settings.warmup, tick)
    before = _settled_batch_counts(detector)
    latencies, wall = closed_loop(detector.detect, frames, cameras, settings.iters, tick)
    after = _settled_batch_counts(detector)
    sizes = None
    if before is not None and after is not None:
        sizes = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    summary = LatencySummary.from_samples(latencies)
    return StreamResult("concurrent", cameras, len(latencies), wall, len(latencies) / wall, summary, sizes)


MODES = {"sequential": measure_sequential, "batched": measure_batched, "concurrent": measure_concurrent}


def stream_modes(detector: Detector) -> tuple[str, ...]:
    return ("concurrent",) if detector.runner.batches_remotely else ("sequential", "batched")


def planned_requests(settings: BenchSettings, modes: Sequence[str]) -> int:
    single = settings.warmup + 2 * settings.iters  # end to end (with warm-up) + staged pass
    return single + len(settings.cameras) * len(modes) * (settings.warmup + settings.iters)


def _measure_backend(
    result: BackendResult, detector: Detector, frames: Sequence[np.ndarray], settings: BenchSettings, progress: Progress
) -> None:
    """Fill ``result`` step by step, so that a failure keeps what was measured before it."""
    modes = stream_modes(detector)
    task = progress.add_task(result.name, total=planned_requests(settings, modes), phase="single stream")
    tick = lambda: progress.advance(task)  # noqa: E731
    result.runner = detector.runner.describe()
    result.single_stream = measure_single(detector, frames, settings.warmup, settings.iters, tick)
    progress.update(task, phase="stages")
    result.stages = measure_stages(detector, frames, settings.iters, tick)
    for cameras in settings.cameras:
        for mode in modes:
            progress.update(task, phase=f"{mode}, {cameras} camera{'s' if cameras > 1 else ''}")
            result.multi_stream.append(MODES[mode](detector, frames, cameras, settings, tick))
    result.peak_memory_bytes = detector.runner.peak_memory_bytes()
    progress.update(task, phase="done")


def bench_backend(
    config: Config, name: str, frames: Sequence[np.ndarray], settings: BenchSettings, progress: Progress, device: torch.device
) -> BackendResult:
    reason = get_backend(name).availability()
    if reason:
        return BackendResult(name, "unavailable", reason)
    result = BackendResult(name, "ok")
    if device.type == "cuda":
        torch.cuda.init()  # the allocator's statistics exist only once CUDA is initialised
        torch.cuda.reset_peak_memory_stats(device)  # each backend's peak, not the process's so far
    try:
        with create_detector(config, name) as detector:
            _measure_backend(result, detector, frames, settings, progress)
    except BackendUnavailable as exc:  # e.g. the server is not reachable
        result.status, result.reason = "unavailable", str(exc)
    except Exception as exc:  # noqa: BLE001  one backend's failure must not cost the others' results
        message = first_line(str(exc))
        result.status = "failed"
        result.reason = message if isinstance(exc, ReidctlError) else f"{type(exc).__name__}: {message}"
    return result


def run_bench(config: Config, settings: BenchSettings, show_progress: bool = True) -> BenchReport:
    settings.validate()
    device = resolve_device(config.detection.device)
    frames, frames_from = load_frames(settings, config.detection.input_size)
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[phase]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not show_progress) as progress:
        results = [bench_backend(config, name, frames, settings, progress, device) for name in settings.backends]
    return BenchReport(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=environment(device),
        settings=dataclasses.asdict(settings) | {"frames": frames_from, "frame_count": len(frames)},
        config=to_dict(config),
        backends=results,
    )


# --- outputs ----------------------------------------------------------------------------------------------------


def plot_path_for(json_path: Path) -> Path:
    return Path(json_path).with_suffix(".png")


def write_plot(report: BenchReport, path: Path) -> None:
    """Throughput and latency percentiles versus camera count, one line per backend and mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (throughput_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for backend in report.backends:
        for mode in dict.fromkeys(stream.mode for stream in backend.multi_stream):
            streams = sorted((s for s in backend.multi_stream if s.mode == mode), key=lambda s: s.cameras)
            cameras = [s.cameras for s in streams]
            color, label = next(colors), f"{backend.name} {mode}"
            throughput_axis.plot(cameras, [s.throughput_fps for s in streams], "o-", color=color, label=label)
            for percentile, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
                values = [getattr(s.latency, f"{percentile}_ms") for s in streams]
                latency_axis.plot(cameras, values, style, marker="o", color=color, label=label if percentile == "p99" else None)
    throughput_axis.set(title="Total throughput", xlabel="cameras", ylabel="frames / s")
    latency_axis.set(title="Latency per request (P50 dotted, P95 dashed, P99 solid)", xlabel="cameras", ylabel="ms")
    counts = sorted({s.cameras for b in report.backends for s in b.multi_stream})
    for axis in (throughput_axis, latency_axis):
        axis.grid(alpha=0.3)
        axis.set_xticks(counts)
        if axis.lines:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "no backend measured", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(f"reidctl bench on {report.environment['gpu']['name']} ({report.created})")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_report(report: BenchReport, path: Path = DEFAULT_BENCH_PATH) -> Path:
    """The JSON first (the record), then the plot beside it; both atomically. Returns the plot's path."""
    write_text_atomic(Path(path), json.dumps(report.to_dict(), indent=2))
    plot = plot_path_for(path)
    write_plot(report, plot)
    return plot


def benchmark(config: Config, settings: BenchSettings, output: Path = DEFAULT_BENCH_PATH, show_progress: bool = True) -> tuple[BenchReport, Path]:
    """Measure, then write the JSON and the plot: what `reidctl bench` (and `make demo`) runs."""
    ensure_writable_dir(Path(output).parent)  # fail before the measurements, not after
    report = run_bench(config, settings, show_progress)
    return report, write_report(report, output)
