"""`reidctl bench` results: the settings, the result records, their JSON form, and what counts as not measured.

Light on purpose (no torch): the CLI reads and prints reports, and `reidctl recommend` judges them, without the
measurement code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.engine.stats import LatencySummary
from reidctl.errors import ReidctlError

BENCH_SCHEMA_VERSION = 1
DEFAULT_BENCH_PATH = Path("runs/bench/bench.json")


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
    named: bool = True  # backends named by the user (not 'all'): each one not measured is an error

    def validate(self) -> BenchSettings:
        for name in ("iters", "max_batch"):
            if getattr(self, name) <= 0:
                raise ReidctlError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ReidctlError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.cameras or any(c <= 0 for c in self.cameras):
            raise ReidctlError(f"--cameras must be positive camera counts, got {self.cameras}")
        if self.max_delay_ms < 0:
            raise ReidctlError(f"--max-delay-ms must be >= 0, got {self.max_delay_ms}")
        if self.frame_size is not None and (self.source is not None or min(self.frame_size) <= 0):
            raise ReidctlError("--frame-size sets the size of synthetic frames: give positive sizes and no --source")
        return self



def parse_cameras(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16] (sorted, no repeats); every count must be a positive integer."""
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'") from None
    if not counts or any(c <= 0 for c in counts):
        raise ReidctlError(f"--cameras must be comma-separated positive integers, got '{text}'")
    return sorted(set(counts))


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
    # The detection load of every frame measured: candidates (anchors at or above conf_threshold, before NMS; None
    # where a server ran NMS) and detections kept, per frame.
    load: dict = field(default_factory=dict)

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
            "load": self.load,
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
            load=data.get("load") or {},
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

    def not_measured(self) -> list[BackendResult]:
        """Backends the run owed and could not measure: every failed one, and unavailable ones the user named.

        With 'all', a backend this machine lacks (TensorRT not installed, no Triton server started) is listed
        with its reason and is no error: 'all' means every backend that can run here.
        """
        named = self.settings.get("named", True)
        return [b for b in self.backends if b.status == "failed" or (b.status == "unavailable" and named)]

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



def plot_path_for(json_path: Path) -> Path:
    return Path(json_path).with_suffix(".png")
