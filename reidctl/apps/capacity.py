"""Capacity at camera rate: the most cameras at F FPS a backend serves on this machine within a P99 budget, with no
frame dropped, and the check of one chosen setup (`--verify`). Both run what deploy.sh runs: `reidctl detect`'s
pipeline (readers, batch loops, the backend, the outputs) on real cameras or generated clips in real time.

The search assumes that a load which passes with N cameras passes with fewer: it grows the camera count
geometrically until a run fails (or the limit passes), then bisects between the last pass and the first failure,
so it takes at most about 2 log2(limit) runs, and never more than ``max_runs``.
"""

from __future__ import annotations

import datetime
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.config import Config, config_from_dict, load_config, to_dict
from reidctl.apps.bench import environment, parse_backends
from reidctl.apps.bench_streams import pipeline_result
from reidctl.apps.bench_report import BackendResult, BenchReport, StreamResult
from reidctl.core.detector import Detector, DetectorPool, create_detector
from reidctl.core.registry import get_backend
from reidctl.core.device import resolve_devices
from reidctl.apps.pipeline import DetectOptions, run_detect
from reidctl.apps.deploy import deployed_outputs
from reidctl.apps.recommend import Need, Recommendation
from reidctl.errors import BackendUnavailable, ReidctlError, describe_error, first_line
from reidctl.io.sources import CameraSpec, camera_specs
from reidctl.io.synthetic import write_synthetic_video

DEFAULT_LIMIT = 64
DEFAULT_MAX_RUNS = 14
CAMERA_RATE_SHARE = 0.95  # of its frame rate each camera of a passing run is served at


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
class CameraPlan:
    """The cameras that `--verify` and `--max-cameras` run through the deployment's pipeline: the user's sources
    (repeated up to the count), else one clip generated at the cameras' resolution and rate that every camera
    plays as a camera would (decoded by its own reader, in real time)."""

    resolution: tuple[int, int]  # (height, width) of the generated clip
    seconds: float
    sources: list[str] | None = None

    @property
    def generated(self) -> bool:
        return not self.sources

    def specs(self, cameras: int, fps: float, directory: Path) -> list[CameraSpec]:
        if self.sources:
            return camera_specs([f"cam{i + 1}={self.sources[i % len(self.sources)]}" for i in range(cameras)])
        height, width = self.resolution
        clip = Path(directory) / f"camera-{height}x{width}-{fps:g}fps.mp4"
        if not clip.exists():
            # every pixel changes every frame: the readers decode more than a fixed camera's clip asks of them
            write_synthetic_video(clip, math.ceil(self.seconds * fps), self.resolution, fps, scene="noise")
        return camera_specs([f"cam{i + 1}={clip}" for i in range(cameras)])

    def describe(self, cameras: int, fps: float) -> str:
        if self.sources:
            return f"{cameras} camera(s) from the given sources"
        height, width = self.resolution
        return (f"{cameras} generated {height}x{width} clip(s) at {fps:g} FPS, {self.seconds:g} s each, new noise in "
                f"every frame: costlier to decode than a fixed camera's; --sources plays yours")


@dataclass
class PipelineRun:
    """One run of the deployment's pipeline at camera rate, as an open-loop result and its detect summary."""

    result: StreamResult
    summary: dict
    stopped: str | None

    def passes(self, latency_ms: float) -> bool:
        """Every camera served at its rate (a file camera that cannot be read that fast falls behind instead of
        dropping), nothing dropped, P99 within ``latency_ms``."""
        slowest = min((camera["fps"] or 0.0 for camera in self.summary["cameras"]), default=0.0)
        at_rate = slowest >= CAMERA_RATE_SHARE * self.result.fps_per_camera
        return self.stopped is None and at_rate and self.result.within(latency_ms)


def run_deployment(
    config: Config,
    backend: str,
    plan: CameraPlan,
    cameras: int,
    fps: float,
    latency_ms: float,
    directory: Path,
    detector: Detector | DetectorPool | None = None,
    warn: Callable[[str], None] = lambda line: None,
) -> PipelineRun:
    """What deploy.sh runs (`reidctl detect` with its outputs, the cameras in real time) on ``plan``'s cameras."""
    specs = plan.specs(cameras, fps, directory)
    options = DetectOptions(realtime=True, max_frames=math.ceil(plan.seconds * fps))
    outputs = Path(tempfile.mkdtemp(prefix="outputs-", dir=directory))
    try:
        done = run_detect(config, specs, deployed_outputs(outputs), options, backend, warn=warn, detector=detector)
    finally:
        shutil.rmtree(outputs, ignore_errors=True)
    if done.failed:
        raise ReidctlError(f"the deployment's pipeline failed: {done.stopped}")
    return PipelineRun(pipeline_result(done, fps, latency_ms), done.summary, done.stopped)


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
    plan: CameraPlan,
    directory: Path,
    limit: int = DEFAULT_LIMIT,
    max_runs: int = DEFAULT_MAX_RUNS,
    on_run: Callable[[str, StreamResult], None] = lambda backend, run: None,
) -> CapacityResult:
    """Search ``backend``'s capacity at ``fps`` per camera on this machine through the deployment's pipeline (one
    detector for every run)."""
    result = CapacityResult(backend, "ok")
    reason = get_backend(backend).availability()
    if reason:
        return CapacityResult(backend, "unavailable", reason)
    try:
        with create_detector(config, backend) as detector:

            def passes(cameras: int) -> bool:
                run = run_deployment(config, backend, plan, cameras, fps, latency_ms, directory, detector)
                result.runs.append(run.result)
                on_run(backend, run.result)
                return run.passes(latency_ms)

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


@dataclass
class CapacitySearch:
    """`recommend --max-cameras`: each backend's search, its runs as a report, and the report to recommend from."""

    results: list[CapacityResult]
    searched: BenchReport  # the search's runs alone
    report: BenchReport  # the bench file's results with the search's runs added (the search's alone without one)

    @property
    def best(self) -> CapacityResult | None:
        """The backend that served the most cameras (None: no backend could be searched)."""
        return max((r for r in self.results if r.outcome), key=lambda r: r.outcome.cameras, default=None)


def search_capacity(
    config: Config,
    need: Need,
    plan: CameraPlan,
    backends: str,
    directory: Path,
    limit: int = DEFAULT_LIMIT,
    bench: BenchReport | None = None,
    on_run: Callable[[str, StreamResult], None] = lambda backend, run: None,
) -> CapacitySearch:
    """Search the capacity at ``need``'s FPS and budget of each backend of ``backends`` ('all' or a comma list) that
    ``bench``'s parity check did not flag, and add the runs to ``bench``."""
    flagged = {b.name for b in bench.backends if bench.parity_flagged(b)} if bench else set()
    names = [name for name in parse_backends(backends)[0] if name not in flagged]
    results = [measure_capacity(config, name, need.fps, need.latency_ms, plan, directory, limit, on_run=on_run)
               for name in names]  # fmt: skip
    settings = {"fps": need.fps, "latency_ms": need.latency_ms, "seconds": plan.seconds, "cameras_from":
                plan.describe(need.cameras, need.fps)}  # fmt: skip
    searched = capacity_report(to_dict(config), config.detection.device, results, settings)
    return CapacitySearch(results, searched, bench.merge(searched) if bench else searched)


@dataclass
class Verification:
    """`recommend --verify`: the chosen backend run as deploy.sh runs it at the need, on this machine."""

    need: Need
    backend: str | None  # None: nothing was chosen, nothing ran, and the check fails
    cameras_from: str  # what the cameras were
    run: PipelineRun | None = None

    @property
    def passed(self) -> bool:
        return self.run is not None and self.run.passes(self.need.latency_ms)


def verify_choice(
    rec: Recommendation,
    plan: CameraPlan,
    directory: Path,
    deployed: Path | None = None,
    on_start: Callable[[Verification], None] = lambda check: None,
) -> Verification:
    """Run ``rec``'s choice with what is deployed: the config file written at ``deployed``, else ``rec``'s deploy
    config. ``on_start`` hears of the run before it begins."""
    need = rec.need
    check = Verification(need, rec.choice, plan.describe(need.cameras, need.fps))
    if rec.choice:
        config = load_config(deployed) if deployed else config_from_dict(rec.deploy_config or {})
        on_start(check)
        check.run = run_deployment(config, rec.choice, plan, need.cameras, need.fps, need.latency_ms, directory)
    return check
