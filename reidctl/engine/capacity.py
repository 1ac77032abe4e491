"""Capacity at camera rate: the most cameras at F FPS a backend serves on this machine within a P99 budget, with no
frame dropped, found with open-loop runs (bench.run_open_loop); and the check of one chosen setup (`--verify`).

The search assumes that a load which passes with N cameras passes with fewer: it grows the camera count
geometrically until a run fails (or the limit passes), then bisects between the last pass and the first failure,
so it takes at most about 2 log2(limit) runs, and never more than ``max_runs``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from reidctl.config import Config
from reidctl.engine.bench import OpenLoopLoad, environment, load_frames, run_open_loop
from reidctl.engine.bench_report import BackendResult, BenchReport, BenchSettings, StreamResult
from reidctl.engine.detector import create_detector, get_backend
from reidctl.engine.device import resolve_devices
from reidctl.errors import BackendUnavailable, ReidctlError, describe_error, first_line

DEFAULT_LIMIT = 64
DEFAULT_MAX_RUNS = 14


@dataclass
class SearchOutcome:
    cameras: int  # the largest count that passed (0: not even one camera)
    tried: list[tuple[int, bool]] = field(default_factory=list)  # (cameras, passed), in order
    first_failure: int | None = None  # the smallest count seen to fail
    resolved: bool = True  # False: max_runs ran out before the search closed

    @property
    def at_limit(self) -> bool:
        """Never failed (the limit or the run budget came first): this machine may serve more than was tried."""
        return self.first_failure is None and self.cameras > 0


def search_max_cameras(
    passes: Callable[[int], bool], limit: int = DEFAULT_LIMIT, start: int = 1, max_runs: int = DEFAULT_MAX_RUNS
) -> SearchOutcome:
    """The largest camera count in [1, limit] for which ``passes`` holds, ``passes`` being monotone."""
    if limit < 1 or max_runs < 1:
        raise ReidctlError(f"the camera limit and the run budget must be at least 1, got {limit} and {max_runs}")
    outcome = SearchOutcome(0)

    def check(cameras: int) -> bool:
        passed = passes(cameras)
        outcome.tried.append((cameras, passed))
        if passed:
            outcome.cameras = max(outcome.cameras, cameras)
        else:
            outcome.first_failure = min(outcome.first_failure or cameras, cameras)
        return passed

    cameras = min(max(start, 1), limit)
    while check(cameras) and cameras < limit:
        if len(outcome.tried) >= max_runs:  # still growing
            outcome.resolved = False
            return outcome
        cameras = min(cameras * 2, limit)
    while outcome.first_failure is not None and outcome.first_failure - outcome.cameras > 1:
        if len(outcome.tried) >= max_runs:
            outcome.resolved = False
            break
        check((outcome.cameras + outcome.first_failure) // 2)
    return outcome


@dataclass
class Measurement:
    """What the open-loop runs need besides the config: the frames and the in-process batcher's policy."""

    frames: Sequence[np.ndarray]
    seconds: float
    jitter: float = 0.0
    max_batch: int = 8
    max_delay_ms: float = 0.0

    @classmethod
    def from_bench(cls, config: Config, bench: BenchReport | None, seconds: float, jitter: float = 0.0) -> Measurement:
        """The bench run's frames and batcher (its synthetic frames, or its source where it is still there)."""
        settings = bench.settings if bench else {}
        frame_size = settings.get("frame_size")
        frame_settings = BenchSettings(
            [], source=settings.get("source"), frame_size=tuple(frame_size) if frame_size else None
        )
        frames, _ = load_frames(frame_settings, config.detection.input_size)
        return cls(frames, seconds, jitter, int(settings.get("max_batch", 8)), float(settings.get("max_delay_ms", 0.0)))


@dataclass
class CapacityResult:
    backend: str
    status: str  # ok | unavailable | failed
    reason: str | None = None
    outcome: SearchOutcome | None = None
    runs: list[StreamResult] = field(default_factory=list)


def measure_capacity(
    config: Config,
    backend: str,
    fps: float,
    latency_ms: float,
    measurement: Measurement,
    limit: int = DEFAULT_LIMIT,
    max_runs: int = DEFAULT_MAX_RUNS,
    on_run: Callable[[str, StreamResult], None] = lambda backend, run: None,
) -> CapacityResult:
    """Search ``backend``'s capacity at ``fps`` per camera on this machine (one detector for every run)."""
    result = CapacityResult(backend, "ok")
    reason = get_backend(backend).availability()
    if reason:
        return CapacityResult(backend, "unavailable", reason)
    try:
        with create_detector(config, backend) as detector:

            def passes(cameras: int) -> bool:
                load = OpenLoopLoad(cameras, fps, measurement.seconds, latency_ms, measurement.jitter)
                run = run_open_loop(detector, measurement.frames, load, measurement.max_batch, measurement.max_delay_ms)
                result.runs.append(run)
                on_run(backend, run)
                return run.within(latency_ms)

            result.outcome = search_max_cameras(passes, limit, max_runs=max_runs)
    except BackendUnavailable as exc:
        return CapacityResult(backend, "unavailable", str(exc))
    except Exception as exc:  # noqa: BLE001  one backend's failure must not cost the others' results
        result.status, result.reason = "failed", first_line(describe_error(exc))
    return result


def capacity_report(config: dict, device: str, results: Sequence[CapacityResult], settings: dict) -> BenchReport:
    """The search's runs as a bench report (open-loop runs only), for `recommend` to judge with a bench file's."""
    return BenchReport(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=environment(resolve_devices(device)),
        settings=settings,
        config=config,
        backends=[BackendResult(r.backend, r.status, r.reason, multi_stream=list(r.runs)) for r in results],
    )


def verify(
    config: Config, backend: str, cameras: int, fps: float, latency_ms: float, measurement: Measurement
) -> StreamResult:
    """The chosen setup, open loop at ``cameras`` x ``fps`` on this machine: pass = ``run.within(latency_ms)``."""
    with create_detector(config, backend) as detector:
        load = OpenLoopLoad(cameras, fps, measurement.seconds, latency_ms, measurement.jitter)
        return run_open_loop(detector, measurement.frames, load, measurement.max_batch, measurement.max_delay_ms)
