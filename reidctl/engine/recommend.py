"""`reidctl recommend`: the backend for N cameras at F FPS within a latency budget.

With a bench result, the answer comes from its multi-stream measurements: a backend qualifies when its total
throughput covers cameras x fps and its per-request P99 fits the budget; the simplest qualifying backend with
HEADROOM wins (pytorch < onnxruntime < tensorrt < triton), then the one with the most headroom; when none has
HEADROOM, the simplest that qualifies at all, said to run near saturation. Without one, the reference
guide's decision tree answers, marked as not measured. Either way a backend that cannot run here is not chosen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reidctl.engine.bench_report import DEFAULT_BENCH_PATH, BenchReport, StreamResult, load_report
from reidctl.engine.detector import available_backends
from reidctl.errors import ReidctlError

SIMPLICITY = ("pytorch", "onnxruntime", "tensorrt", "triton")  # simplest to set up and run first
# Throughput over the need a choice should keep: bench measures a closed loop, i.e. the saturated throughput, and
# cameras at their fixed rate on a backend at 99% load queue without bound (the queue grows as load / (1 - load)).
HEADROOM = 1.2
LOW_LATENCY_MS = 30.0  # the reference's "Need low latency (< 30ms)? -> Triton"
NOT_REGISTERED = "not registered in this reidctl"

# The reference guide's "Summary" table: scenario -> (backend, reason).
SUMMARY = {
    "Development": ("pytorch", "Easy debugging"),
    "Single camera (< 20 FPS)": ("pytorch", "Simple setup"),
    "Single camera (20-30 FPS)": ("tensorrt", "Best single-stream performance"),
    "2-3 cameras": ("tensorrt", "Good balance"),
    "4+ cameras": ("triton", "Dynamic batching advantage"),
    "Low latency required": ("triton", "CUDA Graphs optimization"),
    "Production deployment": ("triton", "Monitoring, versioning, scalability"),
}
# Detection keys every snippet carries, and the per-backend keys that are not in a section of their own.
COMMON_KEYS = ("model_path", "model_type", "test_size", "fp16", "conf_threshold", "nms_threshold", "device")
BACKEND_KEYS = {"pytorch": ("fuse", "cuda_graph", "compile")}


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

    def margin(self, need: Need) -> float:
        """Headroom in the tighter dimension: >= 1 when both throughput and P99 meet the need."""
        return min(self.throughput_fps / need.total_fps, need.latency_ms / self.p99_ms)

    def meets(self, need: Need) -> bool:
        return self.throughput_fps >= need.total_fps and self.p99_ms <= need.latency_ms


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
        }


def simplicity_rank(backend: str) -> int:
    return SIMPLICITY.index(backend) if backend in SIMPLICITY else len(SIMPLICITY)


def why_not_here(backend: str, availability: dict[str, str | None]) -> str | None:
    """None when ``backend`` can run on this machine, else the reason."""
    return availability[backend] if backend in availability else NOT_REGISTERED


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
    if est.throughput_fps < need.total_fps:
        verdicts.append("too slow")
        details.append(f"{est.throughput_fps:.1f} of {need.total_fps:.1f} FPS")
    if est.p99_ms > need.latency_ms:
        verdicts.append("P99 over budget")
        details.append(f"P99 {est.p99_ms:.1f} ms > {need.latency_ms:g} ms")
    return ", ".join(verdicts), "; ".join(details)


def judge_measured(report: BenchReport, need: Need, availability: dict[str, str | None]) -> list[Verdict]:
    """A verdict for every backend in the bench or registered here, simplest first."""
    measured = {b.name: b for b in report.backends}
    verdicts = []
    for name in sorted(set(measured) | set(availability), key=lambda n: (simplicity_rank(n), n)):
        result = measured.get(name)
        here = why_not_here(name, availability)
        if result is None:
            verdicts.append(Verdict(name, False, "unavailable here", here) if here else Verdict(name, False, "not measured", "run `reidctl bench`"))
            continue
        if result.status != "ok" or not result.multi_stream:
            verdicts.append(Verdict(name, False, result.status, result.reason or "no multi-stream measurement"))
            continue
        by_mode: dict[str, list[StreamResult]] = {}
        for stream in result.multi_stream:
            by_mode.setdefault(stream.mode, []).append(stream)
        estimates = [estimate(streams, need.cameras) for streams in by_mode.values()]
        best = max(estimates, key=lambda e: (e.meets(need), e.margin(need)))
        if here:
            verdict, detail, meets = "unavailable here", here, False
        elif best.meets(need):
            verdict, detail, meets = "meets", "", True
        else:
            (verdict, detail), meets = _shortfall(need, best), False
        verdicts.append(Verdict(name, meets, verdict, detail, best, best.margin(need)))
    return verdicts


def _describe(v: Verdict, need: Need) -> str:
    e = v.estimate
    where = f"extrapolated from {e.measured_cameras}" if e.extrapolated else f"measured at {e.measured_cameras}"
    return (
        f"{v.backend} ({e.mode}, {where} camera{'s' if e.measured_cameras > 1 else ''}): "
        f"{e.throughput_fps:.1f} FPS for {need.total_fps:.1f} needed ({e.throughput_fps / need.total_fps:.2f}x), "
        f"P99 {e.p99_ms:.1f} ms for a {need.latency_ms:g} ms budget"
    )


def recommend_measured(report: BenchReport, need: Need, availability: dict[str, str | None]) -> tuple[Verdict | None, list[Verdict], list[str]]:
    verdicts = judge_measured(report, need, availability)
    lines = [f"Need {need.cameras} camera(s) x {need.fps:g} FPS = {need.total_fps:.1f} FPS total, P99 <= {need.latency_ms:g} ms."]
    meeting = sorted((v for v in verdicts if v.meets), key=lambda v: (simplicity_rank(v.backend), -v.margin))
    roomy = [v for v in meeting if v.estimate.throughput_fps >= HEADROOM * need.total_fps]
    chosen = (roomy or meeting)[0] if meeting else None
    if chosen:
        order = f"simplicity: {' < '.join(SIMPLICITY)}"
        lines.append(f"Chosen: {_describe(chosen, need)}.")
        if roomy:
            lines.append(f"It is the simplest backend that meets the need with {HEADROOM:g}x throughput headroom ({order}).")
        else:
            lines.append(
                f"It is the simplest backend that meets the need ({order}), but none has {HEADROOM:g}x throughput "
                "headroom: it would run near saturation, where frames queue and latency grows."
            )
        for v in meeting:
            if v is chosen:
                continue
            tight = roomy and v not in roomy
            lines.append(f"{'Passed over' if tight else 'Also meets'}: {_describe(v, need)}" + (f", under {HEADROOM:g}x headroom." if tight else "."))
        if chosen.estimate.extrapolated:
            lines.append(f"Not measured at {need.cameras} cameras: rerun `reidctl bench --cameras {need.cameras}` to confirm.")
    else:
        runnable = [v for v in verdicts if v.estimate and not why_not_here(v.backend, availability)]
        closest = max(runnable, key=lambda v: v.margin, default=None)
        lines.append("No backend measured here meets the need.")
        if closest:
            lines.append(f"Closest: {_describe(closest, need)}.")
        lines.append("Lower --fps or --cameras, raise --latency-ms, or bench a faster backend or GPU.")
    lines += [f"{v.backend}: {v.verdict} ({v.detail})." for v in verdicts if not v.meets and v.detail]
    return chosen, verdicts, lines


def decision_tree(need: Need) -> str:
    """The reference's decision tree: a low-latency budget first, then camera count and FPS; a SUMMARY scenario."""
    if need.latency_ms < LOW_LATENCY_MS:
        return "Low latency required"
    if need.cameras == 1:
        return "Single camera (< 20 FPS)" if need.fps < 20 else "Single camera (20-30 FPS)"
    return "2-3 cameras" if need.cameras <= 3 else "4+ cameras"


def _tree_verdict(name: str, chosen: str | None, availability: dict[str, str | None]) -> Verdict:
    if name == chosen:
        return Verdict(name, True, "chosen (decision tree)")
    if availability[name]:
        return Verdict(name, False, "unavailable here", availability[name])
    return Verdict(name, False, "available")


def recommend_unmeasured(need: Need, availability: dict[str, str | None]) -> tuple[str | None, str, list[Verdict], list[str]]:
    scenario = decision_tree(need)
    pick, reason = SUMMARY[scenario]
    lines = [
        "NOT MEASURED: no bench result, so this follows the reference guide's decision tree (Tesla V100 figures), "
        "not this machine. Run `reidctl bench` for a measured answer.",
        f"Scenario '{scenario}' -> {pick} ({reason}).",
    ]
    chosen = pick
    why = why_not_here(pick, availability)
    if why:
        simpler = [b for b in SIMPLICITY[: simplicity_rank(pick)][::-1] if not why_not_here(b, availability)]
        chosen = simpler[0] if simpler else None
        fallback = f"falling back to {chosen}, the next simpler backend available." if chosen else "no simpler backend is available."
        lines.append(f"{pick} cannot run here ({why}); {fallback}")
    verdicts = [_tree_verdict(name, chosen, availability) for name in sorted(availability, key=lambda n: (simplicity_rank(n), n))]
    return chosen, scenario, verdicts, lines


def triton_batching(cameras: int, measured: dict) -> dict:
    """Dynamic batching for N closed-loop cameras: a batch never exceeds N, so max_batch_size covers N."""
    max_batch = max(int(measured.get("max_batch_size", 1)), 1 << (cameras - 1).bit_length())
    return {
        "max_batch_size": max_batch,
        "max_queue_delay_ms": measured.get("max_queue_delay_ms", 0.5),
        "preferred_batch_sizes": [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch],
    }


def config_snippet(backend: str, mode: str | None, config: dict, need: Need, batcher: dict | None = None) -> str:
    """The `detection:` section to put in configs/config.yaml for ``backend``."""
    det = config.get("detection", {})
    section = {"backend": backend} | {k: det[k] for k in COMMON_KEYS + BACKEND_KEYS.get(backend, ()) if k in det}
    if isinstance(det.get(backend), dict):
        section[backend] = dict(det[backend])
    if backend == "triton":
        section["triton"] = section.get("triton", {}) | triton_batching(need.cameras, det.get("triton", {}))
    header = "# configs/config.yaml\n"
    if mode == "batched" and batcher:
        header += (
            f"# measured with the in-process micro-batcher (max batch {batcher['max_batch']}, "
            f"max delay {batcher['max_delay_ms']:g} ms): serve the cameras through reidctl.engine.batcher.MicroBatcher\n"
        )
    return header + yaml.safe_dump({"detection": section}, sort_keys=False, default_flow_style=None)


def find_bench(path: Path | None) -> Path | None:
    """The given bench file, else the last one at the default path if there is one."""
    if path is not None:
        return Path(path)
    return DEFAULT_BENCH_PATH if DEFAULT_BENCH_PATH.is_file() else None


def recommend(
    need: Need,
    bench_path: Path | None,
    config: dict,
    availability: dict[str, str | None] | None = None,
) -> Recommendation:
    """``config``: the configuration to base the snippet on when there is no bench result."""
    need.validate()
    availability = available_backends() if availability is None else availability
    if bench_path is None:
        chosen, scenario, verdicts, lines = recommend_unmeasured(need, availability)
        snippet = config_snippet(chosen, None, config, need) if chosen else None
        return Recommendation(need, False, chosen, None, lines, verdicts, snippet, scenario=scenario)
    report = load_report(bench_path)
    chosen, verdicts, lines = recommend_measured(report, need, availability)
    lines.insert(0, f"From {bench_path} ({report.created}, {report.environment['gpu']['name']}).")
    snippet = None
    if chosen:
        snippet = config_snippet(chosen.backend, chosen.estimate.mode, report.config, need, report.settings)
    return Recommendation(
        need,
        True,
        chosen.backend if chosen else None,
        chosen.estimate.mode if chosen else None,
        lines,
        verdicts,
        snippet,
        bench_path=str(bench_path),
        environment=report.environment,
    )
