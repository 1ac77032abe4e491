"""`reidctl recommend`: the backend for N cameras at F FPS within a latency budget.

With a bench result, the answer comes from its multi-stream measurements. Open-loop runs (cameras on their own
clock) at the requested FPS answer first: a backend qualifies when a run with at least that many cameras dropped
nothing and kept P99 within the budget (or is ruled out by one with at most that many that did not). Otherwise the
closed-loop (saturation) runs answer: a backend qualifies when its total throughput covers cameras x fps and its
P99 fits the budget. The simplest qualifying backend with headroom wins (the order comes from each backend's
registry record, its simplicity; an open-loop pass has its queueing measured, a saturation figure needs HEADROOM
over the need), then the one with the most margin; when none has headroom, the simplest that qualifies at all,
said to run near saturation. A backend whose detections diverge from PyTorch fp32 (bench --parity) is never chosen.
Without a bench result, the reference guide's decision tree answers (apps/reference.py), marked as not measured.
Either way a backend that cannot run here is not chosen. What deploying the choice takes is apps/deploy.py's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.apps.bench_report import BackendResult, BenchReport, StreamResult, load_report, serving_devices
from reidctl.apps.deploy import config_snippet, deploy_detection
from reidctl.apps.reference import SUMMARY, decision_tree
from reidctl.core.registry import REFERENCE_PRECISION, available_backends, reference_backend, registered_backends
from reidctl.errors import ReidctlError

# Throughput over the need a choice should keep: bench measures a closed loop, i.e. the saturated throughput, and
# cameras at their fixed rate on a backend at 99% load queue without bound (the queue grows as load / (1 - load)).
HEADROOM = 1.2
NOT_REGISTERED = "not registered in this reidctl"


@dataclass(frozen=True)
class Need:
    cameras: int
    fps: float  # per camera
    latency_ms: float  # P99 budget per request

    @property
    def total_fps(self) -> float:
        return self.cameras * self.fps

    def validate(self) -> Need:
        if self.cameras <= 0:
            raise ReidctlError(f"--cameras must be a positive integer, got {self.cameras}")
        if not math.isfinite(self.fps) or self.fps <= 0:  # nan passes every comparison: check it by name
            raise ReidctlError(f"--fps must be a positive finite number, got {self.fps}")
        if not math.isfinite(self.latency_ms) or self.latency_ms <= 0:
            raise ReidctlError(f"--latency-ms must be a positive finite number, got {self.latency_ms}")
        return self


@dataclass
class Estimate:
    """One backend and mode at the requested camera count, from the nearest measurement."""

    mode: str
    measured_cameras: int
    extrapolated: bool  # the requested count is above every measured one
    throughput_fps: float
    p99_ms: float
    load: str = "closed"  # closed: saturation; open: cameras at the requested FPS on their own clock
    dropped: int | None = None  # open loop

    def margin(self, need: Need) -> float:
        """Headroom in the tighter dimension: >= 1 when both throughput and P99 meet the need."""
        if self.load == "open":  # the rate was the need's: what is left is the latency budget
            return need.latency_ms / self.p99_ms if self.dropped == 0 else 0.0
        return min(self.throughput_fps / need.total_fps, need.latency_ms / self.p99_ms)

    def meets(self, need: Need) -> bool:
        if self.load == "open":
            return self.dropped == 0 and self.p99_ms <= need.latency_ms
        return self.throughput_fps >= need.total_fps and self.p99_ms <= need.latency_ms

    def roomy(self, need: Need) -> bool:
        """Meets the need with room for the queueing a saturation figure hides (measured in an open loop)."""
        return self.meets(need) and (self.load == "open" or self.throughput_fps >= HEADROOM * need.total_fps)


@dataclass
class Verdict:
    backend: str
    meets: bool
    verdict: str  # short, for the table: meets, too slow, P99 over budget, unavailable here, failed, not measured...
    detail: str = ""  # why, in words and numbers
    estimate: Estimate | None = None
    margin: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Recommendation:
    need: Need
    measured: bool
    choice: str | None
    mode: str | None
    reasoning: list[str]
    verdicts: list[Verdict]
    config_snippet: str | None
    bench_path: str | None = None
    scenario: str | None = None  # the decision tree's row of SUMMARY (not measured)
    environment: dict = field(default_factory=dict)
    capacity: dict | None = None  # what this machine serves at the need's FPS (see machine_capacity)
    deploy_config: dict | None = None  # the full config to deploy (the chosen backend's)
    max_batch: int | None = None  # the largest batch of the bench's in-process runs (None: detect's default)

    def to_dict(self) -> dict:
        return {
            "need": dataclasses.asdict(self.need) | {"total_fps": self.need.total_fps},
            "measured": self.measured,
            "choice": self.choice,
            "mode": self.mode,
            "reasoning": self.reasoning,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "config_snippet": self.config_snippet,
            "bench_path": self.bench_path,
            "scenario": self.scenario,
            "environment": self.environment,
            "capacity": self.capacity,
            "deploy_config": self.deploy_config,
        }


def simplicity_rank(backend: str) -> float:
    """Its record's place in the simplicity order; after every registered backend where it is not one here."""
    record = registered_backends().get(backend)
    return record.simplicity if record else math.inf


def why_not_here(backend: str, availability: dict[str, str | None]) -> str | None:
    """None when ``backend`` can run on this machine, else the reason."""
    return availability[backend] if backend in availability else NOT_REGISTERED


def same_rate(run: StreamResult, fps: float) -> bool:
    return run.open_loop and run.fps_per_camera is not None and abs(run.fps_per_camera - fps) <= 1e-6 * fps


def open_loop_estimate(runs: list[StreamResult], need: Need) -> Estimate | None:
    """From open-loop runs at the need's FPS: a pass with at least the cameras needed (the fewest such), else a
    failure with at most the cameras needed (the most such); None when the runs say nothing about this count."""
    runs = [r for r in runs if same_rate(r, need.fps)]
    passes = sorted(
        (r for r in runs if r.cameras >= need.cameras and r.within(need.latency_ms)), key=lambda r: r.cameras
    )
    fails = sorted(
        (r for r in runs if r.cameras <= need.cameras and not r.within(need.latency_ms)), key=lambda r: -r.cameras
    )
    run = (passes or fails or [None])[0]
    if run is None:
        return None
    return Estimate(run.mode, run.cameras, False, run.throughput_fps, run.latency.p99_ms, "open", run.dropped)


def estimate(streams: list[StreamResult], cameras: int) -> Estimate:
    """The measurement at the nearest camera count >= ``cameras``; above them all, the largest one extrapolated:
    throughput stays at its measured (saturated) value and, in a closed loop, latency grows with the cameras
    sharing it (Little's law: latency = cameras / throughput), so P99 is scaled by requested / measured."""
    ordered = sorted(streams, key=lambda s: s.cameras)
    at_or_above = [s for s in ordered if s.cameras >= cameras]
    if at_or_above:
        s = at_or_above[0]
        return Estimate(s.mode, s.cameras, False, s.throughput_fps, s.latency.p99_ms)
    s = ordered[-1]
    return Estimate(s.mode, s.cameras, True, s.throughput_fps, s.latency.p99_ms * cameras / s.cameras)


def _shortfall(need: Need, est: Estimate) -> tuple[str, str]:
    """The short verdict and its numbers for an estimate that misses the need."""
    verdicts, details = [], []
    if est.load == "open" and est.dropped:
        verdicts.append("drops frames")
        details.append(f"{est.dropped} frame(s) dropped at {est.measured_cameras} cameras")
    if est.load == "closed" and est.throughput_fps < need.total_fps:
        verdicts.append("too slow")
        details.append(f"{est.throughput_fps:.1f} of {need.total_fps:.1f} FPS")
    if est.p99_ms > need.latency_ms:
        verdicts.append("P99 over budget")
        details.append(f"P99 {est.p99_ms:.1f} ms > {need.latency_ms:g} ms")
    return ", ".join(verdicts), "; ".join(details)


def backend_estimate(result: BackendResult, need: Need) -> Estimate | None:
    """Open-loop evidence first (it measures queueing at the need's rate); else the best closed-loop mode."""
    opened = open_loop_estimate(result.multi_stream, need)
    if opened:
        return opened
    by_mode: dict[str, list[StreamResult]] = {}
    for stream in result.multi_stream:
        if not stream.open_loop:
            by_mode.setdefault(stream.mode, []).append(stream)
    estimates = [estimate(streams, need.cameras) for streams in by_mode.values()]
    return max(estimates, key=lambda e: (e.meets(need), e.margin(need)), default=None)


def judge_measured(report: BenchReport, need: Need, availability: dict[str, str | None]) -> list[Verdict]:
    """A verdict for every backend in the bench or registered here, simplest first."""
    measured = {b.name: b for b in report.backends}
    verdicts = []
    for name in sorted(set(measured) | set(availability), key=lambda n: (simplicity_rank(n), n)):
        result = measured.get(name)
        here = why_not_here(name, availability)
        if result is None:
            verdicts.append(
                Verdict(name, False, "unavailable here", here)
                if here
                else Verdict(name, False, "not measured", "run `reidctl bench`")
            )
            continue
        if result.status != "ok" or not result.multi_stream:
            verdicts.append(Verdict(name, False, result.status, result.reason or "no multi-stream measurement"))
            continue
        best = backend_estimate(result, need)
        diverged = report.parity_flagged(result)
        if best is None:  # open-loop runs at another FPS only
            detail = f"no run at {need.fps:g} FPS per camera or at saturation"
            verdicts.append(Verdict(name, False, "not measured", detail))
            continue
        if here:
            verdict, detail, meets = "unavailable here", here, False
        elif diverged:
            against = f"parity against {reference_backend()} {REFERENCE_PRECISION}"
            verdict, detail, meets = "detections diverge", f"{against}: {diverged.describe()}", False
        elif best.meets(need):
            verdict, detail, meets = "meets", "", True
        else:
            (verdict, detail), meets = _shortfall(need, best), False
        verdicts.append(Verdict(name, meets, verdict, detail, best, best.margin(need)))
    return verdicts


def _describe(v: Verdict, need: Need) -> str:
    e = v.estimate
    plural = "s" if e.measured_cameras > 1 else ""
    if e.load == "open":
        return (
            f"{v.backend} ({e.mode}, open loop, measured at {e.measured_cameras} camera{plural} x {need.fps:g} FPS): "
            f"{e.throughput_fps:.1f} FPS served, {e.dropped} dropped, "
            f"P99 {e.p99_ms:.1f} ms for a {need.latency_ms:g} ms budget"
        )
    where = f"extrapolated from {e.measured_cameras}" if e.extrapolated else f"measured at {e.measured_cameras}"
    return (
        f"{v.backend} ({e.mode}, saturation, {where} camera{plural}): "
        f"{e.throughput_fps:.1f} FPS for {need.total_fps:.1f} needed ({e.throughput_fps / need.total_fps:.2f}x), "
        f"P99 {e.p99_ms:.1f} ms for a {need.latency_ms:g} ms budget"
    )


def who_serves(environment: dict) -> str:
    """The subject of a capacity sentence: 'This machine serves', or with several devices '2 GPUs serve'."""
    return " ".join(serving_devices(environment))


def machine_capacity(report: BenchReport, need: Need, availability: dict[str, str | None]) -> dict | None:
    """The most cameras at the need's FPS this machine serves on one backend it may recommend: from open-loop runs
    that passed (measured), else from saturated throughput / (HEADROOM x fps), said to be estimated."""
    usable = [
        b
        for b in report.backends
        if b.status == "ok" and not why_not_here(b.name, availability) and not report.parity_flagged(b)
    ]
    measured = [
        (r.cameras, b.name)
        for b in usable
        for r in b.multi_stream
        if same_rate(r, need.fps) and r.within(need.latency_ms)
    ]
    if measured:
        cameras, backend = max(measured, key=lambda m: (m[0], -simplicity_rank(m[1])))
        return {
            "cameras": cameras,
            "backend": backend,
            "measured": True,
            "line": f"{who_serves(report.environment)} up to {cameras} camera(s) at {need.fps:g} FPS "
            f"within {need.latency_ms:g} ms "
            f"on {backend} (measured open loop).",
        }
    saturated = [(s.throughput_fps, b.name) for b in usable for s in b.multi_stream if not s.open_loop]
    if not saturated:
        return None
    throughput, backend = max(saturated, key=lambda m: (m[0], -simplicity_rank(m[1])))
    cameras = math.floor(throughput / (HEADROOM * need.fps))
    return {
        "cameras": cameras,
        "backend": backend,
        "measured": False,
        "line": f"{who_serves(report.environment)} about {cameras} camera(s) at {need.fps:g} FPS on {backend}: "
        f"ESTIMATED from its "
        f"saturated throughput ({throughput:.1f} FPS / {HEADROOM:g}x headroom), latency not checked; "
        f"measure with `reidctl recommend --fps {need.fps:g} --latency-ms {need.latency_ms:g} "
        "--max-cameras`.",
    }


def recommend_measured(
    report: BenchReport, need: Need, availability: dict[str, str | None]
) -> tuple[Verdict | None, list[Verdict], list[str]]:
    verdicts = judge_measured(report, need, availability)
    lines = [
        f"Need {need.cameras} camera(s) x {need.fps:g} FPS = {need.total_fps:.1f} FPS total, P99 <= "
        f"{need.latency_ms:g} ms."
    ]
    meeting = sorted((v for v in verdicts if v.meets), key=lambda v: (simplicity_rank(v.backend), -v.margin))
    roomy = [v for v in meeting if v.estimate.roomy(need)]
    chosen = (roomy or meeting)[0] if meeting else None
    if chosen:
        order = f"simplicity: {' < '.join(registered_backends())}"
        lines.append(f"Chosen: {_describe(chosen, need)}.")
        if roomy:
            room = f"with {HEADROOM:g}x throughput headroom"
            if chosen.estimate.load == "open":
                room = "measured at camera rate"
            lines.append(f"It is the simplest backend that meets the need {room} ({order}).")
        else:
            lines.append(
                f"It is the simplest backend that meets the need ({order}), but none has {HEADROOM:g}x throughput "
                "headroom: it would run near saturation, where frames queue and latency grows."
            )
        for v in meeting:
            if v is chosen:
                continue
            tight = roomy and v not in roomy
            lines.append(
                f"{'Passed over' if tight else 'Also meets'}: {_describe(v, need)}"
                + (f", under {HEADROOM:g}x headroom." if tight else ".")
            )
        if chosen.estimate.extrapolated:
            lines.append(
                f"Not measured at {need.cameras} cameras: rerun `reidctl bench --cameras {need.cameras}` to confirm."
            )
    else:
        runnable = [v for v in verdicts if v.estimate and not why_not_here(v.backend, availability)]
        closest = max(runnable, key=lambda v: v.margin, default=None)
        lines.append("No backend measured here meets the need.")
        if closest:
            lines.append(f"Closest: {_describe(closest, need)}.")
        capacity = machine_capacity(report, need, availability)
        if capacity:
            lines.append(capacity["line"])
        lines.append("Lower --fps or --cameras, raise --latency-ms, or bench a faster backend or GPU.")
    lines += [f"{v.backend}: {v.verdict} ({v.detail})." for v in verdicts if not v.meets and v.detail]
    return chosen, verdicts, lines


def _tree_verdict(name: str, chosen: str | None, availability: dict[str, str | None]) -> Verdict:
    if name == chosen:
        return Verdict(name, True, "chosen (decision tree)")
    if availability[name]:
        return Verdict(name, False, "unavailable here", availability[name])
    return Verdict(name, False, "available")


def recommend_unmeasured(
    need: Need, availability: dict[str, str | None]
) -> tuple[str | None, str, list[Verdict], list[str]]:
    scenario = decision_tree(need.cameras, need.fps, need.latency_ms)
    pick, reason = SUMMARY[scenario]
    lines = [
        "NOT MEASURED: no bench result, so this follows the reference guide's decision tree (Tesla V100 figures), "
        "not this machine. Run `reidctl bench` for a measured answer.",
        f"Scenario '{scenario}' -> {pick} ({reason}).",
    ]
    chosen = pick
    why = why_not_here(pick, availability)
    if why:
        simpler = [name for name in reversed(registered_backends())
                   if simplicity_rank(name) < simplicity_rank(pick) and not why_not_here(name, availability)]
        chosen = simpler[0] if simpler else None
        fallback = (
            f"falling back to {chosen}, the next simpler backend available."
            if chosen
            else "no simpler backend is available."
        )
        lines.append(f"{pick} cannot run here ({why}); {fallback}")
    verdicts = [
        _tree_verdict(name, chosen, availability)
        for name in sorted(availability, key=lambda n: (simplicity_rank(n), n))
    ]
    return chosen, scenario, verdicts, lines


def recommend(
    need: Need,
    bench: Path | BenchReport | None,
    config: dict,
    availability: dict[str, str | None] | None = None,
    source: str | None = None,
) -> Recommendation:
    """``bench``: a bench file or report (None: the decision tree), ``source`` says where a report came from;
    ``config``: the configuration to deploy when there is no bench result (with one, the configuration it measured)."""
    need.validate()
    availability = available_backends() if availability is None else availability
    if bench is None:
        chosen, scenario, verdicts, lines = recommend_unmeasured(need, availability)
        rec = Recommendation(need, False, chosen, None, lines, verdicts, None, scenario=scenario)
        return _with_config(rec, config)
    report = bench if isinstance(bench, BenchReport) else load_report(bench)
    source = source or str(bench)
    chosen, verdicts, lines = recommend_measured(report, need, availability)
    lines.insert(0, f"From {source} ({report.created}, {report.environment['gpu']['name']}).")
    rec = Recommendation(
        need,
        True,
        chosen.backend if chosen else None,
        chosen.estimate.mode if chosen else None,
        lines,
        verdicts,
        None,
        bench_path=None if isinstance(bench, BenchReport) else str(bench),
        environment=report.environment,
        capacity=machine_capacity(report, need, availability),
        max_batch=report.settings.get("max_batch"),
    )
    return _with_config(rec, report.config)


def _with_config(rec: Recommendation, config: dict) -> Recommendation:
    if rec.choice:
        rec.config_snippet = config_snippet(rec.choice, rec.mode, config, rec.need.cameras, rec.max_batch)
        rec.deploy_config = {"detection": deploy_detection(rec.choice, config, rec.need.cameras)}
    return rec
