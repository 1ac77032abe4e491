"""`reidctl bench` results: the settings, the result records, their JSON form, and what counts as not measured.

Light on purpose (no torch): the CLI reads and prints reports, and `reidctl recommend` judges them, without the
measurement code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.config import check_regular_file
from reidctl.apps.clients import check_client_processes
from reidctl.apps.stats import LatencySummary, mean_size
from reidctl.errors import ReidctlError

# 2: open-loop runs (cameras on their own clock) beside the closed-loop ones, and the parity check.
BENCH_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # version 1 files hold closed-loop runs only
DEFAULT_BENCH_PATH = Path("runs/bench/bench.json")
# A bench file of every backend at many camera counts is well under 1 MB; a larger one is not a bench file.
MAX_BENCH_BYTES = 64 << 20


@dataclass
class BenchSettings:
    backends: list[str]
    iters: int = 1000
    warmup: int = 100
    cameras: list[int] = field(default_factory=lambda: [1, 4])
    source: str | None = None  # video, image or image folder; None: synthetic frames
    frame_size: tuple[int, int] | None = None  # synthetic frame (height, width); None: the test size
    # Largest batch of the in-process pipeline runs (detect's --max-batch); None: detect's default. Files written
    # before the pipeline replaced bench's micro-batcher also hold its max_delay_ms, which nothing reads.
    max_batch: int | None = None
    named: bool = True  # backends named by the user (not 'all'): each one not measured is an error
    fps: float | None = None  # open loop: each camera sends frames at this rate on its own clock
    seconds: float = 3.0  # measured time of each open-loop run
    latency_ms: float = 100.0  # budget: a frame answered later than this is late
    jitter: float = 0.0  # open loop: each send time moves by up to +-jitter/2 of the period
    saturation: bool = True  # the closed-loop runs (saturated throughput)
    parity: bool = False  # run the detections of every backend and precision against PyTorch fp32
    parity_tolerance: float = 0.02  # most boxes missed or extra, as a fraction of the reference's boxes
    parity_score_tolerance: float = 0.05  # largest score difference of a matched box
    client_processes: int = 1  # processes that send a server's closed-loop requests, the cameras split over them

    def validate(self) -> BenchSettings:
        for name in ("iters", "max_batch", "client_processes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ReidctlError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ReidctlError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.cameras or any(c <= 0 for c in self.cameras):
            raise ReidctlError(f"--cameras must be positive camera counts, got {self.cameras}")
        if self.client_processes > 1:
            check_client_processes(self.client_processes, self.cameras)
        if self.frame_size is not None and (self.source is not None or min(self.frame_size) <= 0):
            raise ReidctlError("--frame-size sets the size of synthetic frames: give positive sizes and no --source")
        check_open_loop(self.fps, self.seconds, self.latency_ms, self.jitter)
        for name in ("parity_tolerance", "parity_score_tolerance"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ReidctlError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        return self


def check_open_loop(fps: float | None, seconds: float, latency_ms: float, jitter: float) -> None:
    """The open-loop options of `bench` and `recommend`; nan is named because it passes every comparison."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ReidctlError(f"--fps must be a positive finite number, got {fps}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ReidctlError(f"--seconds must be a positive finite number, got {seconds}")
    if not (math.isfinite(latency_ms) and latency_ms > 0):
        raise ReidctlError(f"--latency-ms must be a positive finite number, got {latency_ms}")
    if not (0 <= jitter < 1):
        raise ReidctlError(f"--jitter is a fraction of the frame period, 0 <= jitter < 1, got {jitter}")



def parse_cameras(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16] (sorted, no repeats); every count must be a positive integer."""
    try:
        counts = [int(p) for p in text.split(",")]
    except ValueError:  # an empty item too ('1,,4'): a typo, not a count to leave out
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'") from None
    if any(c <= 0 for c in counts):
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'")
    return sorted(set(counts))


@dataclass
class CameraStats:
    """One camera of an open-loop run."""

    camera: int
    due: int  # frames whose send time fell in the measured window (detect's pipeline: every frame played)
    served: int
    # Client threads: due while the camera's previous frame was still in flight; detect's pipeline: replaced by the
    # camera's next frame before a batch took it.
    dropped: int
    late: int  # answered later than the latency budget
    achieved_fps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    # Client threads: how late the frames left against their schedule (the client's own pacing); None: not measured
    # (detect's pipeline, whose readers pace the frames)
    send_lag_p99_ms: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CameraStats:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass
class StreamResult:
    mode: str  # sequential | pipeline | concurrent (files from before the pipeline mode: "batched", in process)
    cameras: int
    requests: int
    wall_s: float
    throughput_fps: float  # all cameras together (open loop: frames answered per second of the measured window)
    latency: LatencySummary  # per request: submit -> result (open loop: the frame's send time -> result)
    batch_sizes: dict[int, int] | None = None  # batch size -> batches run (detect's batch loops, or the server's)
    load: str = "closed"  # closed: a camera sends when its last result is back (saturation); open: on its clock
    fps_per_camera: float | None = None  # open loop: the rate each camera sends at
    latency_budget_ms: float | None = None  # open loop: what counts as late
    jitter: float | None = None
    dropped: int | None = None  # open loop, all cameras
    late: int | None = None
    per_camera: list[CameraStats] | None = None
    per_device: list[dict] | None = None  # several devices: each one's {"device", "batches", "frames"} in the run

    @property
    def open_loop(self) -> bool:
        return self.load == "open"

    def within(self, latency_ms: float) -> bool:
        """An open-loop run that dropped nothing and kept P99 within ``latency_ms``."""
        return self.open_loop and self.dropped == 0 and self.latency.p99_ms <= latency_ms

    @property
    def mean_batch(self) -> float | None:
        return mean_size(self.batch_sizes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self) | {"latency": self.latency.to_dict(), "mean_batch": self.mean_batch}
        data["per_camera"] = [c.to_dict() for c in self.per_camera] if self.per_camera is not None else None
        if self.per_device is None:
            del data["per_device"]  # one device: the JSON keeps the shape it had before device lists
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
            load=data.get("load", "closed"),
            fps_per_camera=data.get("fps_per_camera"),
            latency_budget_ms=data.get("latency_budget_ms"),
            jitter=data.get("jitter"),
            dropped=data.get("dropped"),
            late=data.get("late"),
            per_camera=[CameraStats.from_dict(c) for c in cameras] if (cameras := data.get("per_camera")) else None,
            per_device=data.get("per_device"),
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
    # The detection load of every frame measured: candidates (anchors at or above conf_threshold, before NMS; None
    # where a server ran NMS) and detections kept, per frame.
    detection_load: dict = field(default_factory=dict)

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
            "detection_load": self.detection_load,
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
            detection_load=data.get("detection_load") or {},
        )


@dataclass
class ParityResult:
    """One backend and precision against the PyTorch fp32 reference, on the same frames."""

    backend: str
    precision: str | None
    status: str  # reference | ok | unavailable | failed
    reason: str | None = None
    frames: int = 0
    reference_boxes: int = 0  # the reference's boxes at or above the counted score
    matched: int = 0  # at IoU >= the match IoU, same class
    missed: int = 0  # reference boxes with no match
    extra: int = 0  # boxes of this backend with no match in the reference
    max_score_diff: float | None = None  # over matched boxes
    flagged: bool = False  # diverges beyond the tolerance: never recommended
    runs_on: str | None = None  # where it computed: cpu, cuda:0, "server cuda" ...

    @property
    def mismatch_rate(self) -> float:
        return (self.missed + self.extra) / max(self.reference_boxes, 1)

    def describe(self) -> str:
        score = f"{self.max_score_diff:.3g}" if self.max_score_diff is not None else "-"
        return (f"{self.backend} {self.precision or ''}: {self.missed} missed and {self.extra} extra of "
                f"{self.reference_boxes} boxes in {self.frames} frames, largest score difference {score}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"mismatch_rate": self.mismatch_rate}

    @classmethod
    def from_dict(cls, data: dict) -> ParityResult:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})  # older files lack some


@dataclass
class BenchReport:
    created: str
    environment: dict
    settings: dict
    config: dict
    backends: list[BackendResult]
    schema_version: int = BENCH_SCHEMA_VERSION
    parity: list[ParityResult] = field(default_factory=list)
    stopped: str | None = None  # "interrupted" or "terminated": the run stopped early, what it measured is kept

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "partial": self.stopped is not None,
            "stopped": self.stopped,
            "created": self.created,
            "environment": self.environment,
            "settings": self.settings,
            "config": self.config,
            "backends": [backend.to_dict() for backend in self.backends],
            "parity": [result.to_dict() for result in self.parity],
        }

    def parity_flagged(self, backend: BackendResult) -> ParityResult | None:
        """The parity result that rules ``backend`` out: flagged at the precision it was measured at (any
        precision where the run does not say)."""
        precision = backend.runner.get("precision")
        for result in self.parity:
            if result.backend == backend.name and result.flagged and precision in (None, result.precision):
                return result
        return None

    def not_measured(self) -> list[BackendResult]:
        """Backends the run owed and could not measure: every failed one, and unavailable ones the user named.

        With 'all', a backend this machine lacks (TensorRT not installed, no Triton server started) is listed
        with its reason and is no error: 'all' means every backend that can run here.
        """
        named = self.settings.get("named", True)
        return [b for b in self.backends if b.status == "failed" or (b.status == "unavailable" and named)]

    def kept(self) -> tuple[list[BackendResult], list[BackendResult]]:
        """The backends whose results the file keeps: those measured whole, and those not measured whose single
        stream was measured before they failed or stopped (partial)."""
        return [b for b in self.backends if b.status == "ok"], [b for b in self.not_measured() if b.single_stream]

    def merge(self, other: BenchReport) -> BenchReport:
        """This report with ``other``'s multi-stream runs added to its backends' of the same name (a backend it
        lacks joins it when ``other`` has runs of it); returns this report."""
        by_name = {b.name: b for b in self.backends}
        for found in other.backends:
            if found.name in by_name:
                by_name[found.name].multi_stream.extend(found.multi_stream)
            elif found.multi_stream:
                self.backends.append(found)
        return self

    @classmethod
    def from_dict(cls, data: dict) -> BenchReport:
        return cls(
            created=data["created"],
            environment=data["environment"],
            settings=data["settings"],
            config=data["config"],
            backends=[BackendResult.from_dict(b) for b in data["backends"]],
            schema_version=data["schema_version"],
            parity=[ParityResult.from_dict(p) for p in data.get("parity") or []],
            stopped=data.get("stopped"),
        )


def serving_devices(environment: dict) -> tuple[str, str]:
    """The subject and verb of a capacity sentence about a report's machine: ("This machine", "serves"), or with
    several devices ("2 GPUs", "serve")."""
    devices = environment.get("devices") or [environment.get("device", "")]
    if len(devices) == 1:
        return "This machine", "serves"
    kind = "GPUs" if all(str(device).startswith("cuda") for device in devices) else "devices"
    return f"{len(devices)} {kind}", "serve"


def load_report(path: Path) -> BenchReport:
    """A bench JSON written by this version's schema; anything else is a one-line error."""
    path = Path(path)
    check_regular_file(path, "bench file")
    size = path.stat().st_size
    if size > MAX_BENCH_BYTES:  # parsed JSON takes several times its size in memory
        raise ReidctlError(f"bench file {path} is {size} bytes; a bench file is at most {MAX_BENCH_BYTES} bytes")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReidctlError(f"bench file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReidctlError(f"bench file not readable: {path} ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise ReidctlError(f"bench file {path} is not valid JSON (line {exc.lineno})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_SCHEMA_VERSIONS:
        readable = " and ".join(map(str, READABLE_SCHEMA_VERSIONS))
        raise ReidctlError(
            f"bench file {path} has schema_version {version!r}; this reidctl reads {readable}: rerun `reidctl bench`"
        )
    try:
        return BenchReport.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReidctlError(f"bench file {path} is malformed ({exc.__class__.__name__}: {exc})") from None


def find_bench(path: Path | None) -> Path | None:
    """The given bench file, else the last one at the default path if there is one."""
    if path is not None:
        return Path(path)
    return DEFAULT_BENCH_PATH if DEFAULT_BENCH_PATH.is_file() else None


def plot_path_for(json_path: Path) -> Path:
    return Path(json_path).with_suffix(".png")
