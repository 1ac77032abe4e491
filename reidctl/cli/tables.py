"""The Rich tables of `reidctl bench` and `reidctl recommend`: a bench report's results, the recommendation's
verdicts and the capacity search's."""

from rich.table import Table
from rich.text import Text

from reidctl.apps.bench_report import BenchReport

STATUS_STYLE = {"ok": "green", "unavailable": "yellow", "failed": "red"}


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _mib(value: int | None) -> str:
    return f"{value / 2**20:.0f} MiB" if value is not None else "-"


def single_table(report: BenchReport) -> Table:
    table = Table(title="Single Stream Results, ms (frame in host memory -> (N, 7) on host)")
    for column in ("Backend", "Avg Time", "Min", "Max", "Std Dev", "P50", "P95", "P99", "FPS"):
        table.add_column(column, justify="left" if column == "Backend" else "right", no_wrap=column == "Backend")
    for b in report.backends:
        if b.single_stream:
            s = b.single_stream
            cells = (s.avg_ms, s.min_ms, s.max_ms, s.std_ms, s.p50_ms, s.p95_ms, s.p99_ms)
            table.add_row(b.name, *map(_ms, cells), f"{s.fps:.2f}")
    return table


def stage_table(report: BenchReport) -> Table:
    table = Table(title="Stage Breakdown, ms avg / P99 (GPU synchronised between stages)")
    table.add_column("Backend", no_wrap=True)
    for stage in ("Preprocess", "Inference", "Postprocess", "Sum of avgs"):
        table.add_column(stage, justify="right")
    for b in report.backends:
        if b.stages:
            cells = [f"{s.avg_ms:.2f} / {s.p99_ms:.2f}" for s in b.stages.values()]
            table.add_row(b.name, *cells, _ms(sum(s.avg_ms for s in b.stages.values())))
    return table


def _per_device_fps(stream) -> str:
    """Several devices: the total FPS split by the frames each device served, e.g. '201.3/198.7'."""
    frames = sum(share["frames"] for share in stream.per_device or ())
    if not frames:
        return "-"
    return "/".join(f"{stream.throughput_fps * share['frames'] / frames:.1f}" for share in stream.per_device)


def _several_devices(report: BenchReport) -> bool:
    return any(s.per_device for b in report.backends for s in b.multi_stream)


def multi_table(report: BenchReport) -> Table:
    table = Table(
        title="Multi-Stream Results, closed loop (saturation: a camera's next frame follows its last one), "
        "latency per request in ms"
    )
    per_device = _several_devices(report)
    columns = ("Backend", "Mode", "Cameras", "Total FPS", *(("FPS per Device",) if per_device else ()),
               "Avg Latency", "P95", "P99", "Avg Batch")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("Backend", "Mode") else "right", no_wrap=column in ("Backend", "Mode")
        )
    for b in report.backends:
        for s in (s for s in b.multi_stream if not s.open_loop):
            batch = f"{s.mean_batch:.2f}" if s.mean_batch is not None else "-"
            table.add_row(
                b.name,
                s.mode,
                str(s.cameras),
                f"{s.throughput_fps:.2f}",
                *((_per_device_fps(s),) if per_device else ()),
                _ms(s.latency.avg_ms),
                _ms(s.latency.p95_ms),
                _ms(s.latency.p99_ms),
                batch,
            )
    return table


def open_loop_table(report: BenchReport) -> Table:
    budget = report.settings.get("latency_ms")
    table = Table(
        title=f"Open Loop Results: each camera sends at its rate; latency in ms from a frame's send time (pipeline: "
        f"from its reader having it); late: over {budget:g} ms; dropped: due while the camera's last frame was in "
        "flight (pipeline: replaced by the camera's next frame before a batch took it)"
    )
    columns = (
        "Backend",
        "Mode",
        "Cams",
        "FPS/Cam",
        "Served FPS",
        *(("FPS per Device",) if _several_devices(report) else ()),
        "Slowest Cam",
        "P50",
        "P95",
        "P99",
        "Late",
        "Dropped",
    )
    for column in columns:
        left = column in ("Backend", "Mode")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for b in report.backends:
        for s in (s for s in b.multi_stream if s.open_loop):
            slowest = min((c.achieved_fps for c in s.per_camera or ()), default=0.0)
            style = "green" if s.within(s.latency_budget_ms) else "red"
            table.add_row(
                b.name,
                s.mode,
                str(s.cameras),
                f"{s.fps_per_camera:g}",
                f"{s.throughput_fps:.1f}",
                *((_per_device_fps(s),) if _several_devices(report) else ()),
                f"{slowest:.1f}",
                _ms(s.latency.p50_ms),
                _ms(s.latency.p95_ms),
                Text(_ms(s.latency.p99_ms), style=style),
                str(s.late),
                Text(str(s.dropped), style=style),
            )
    return table


def parity_table(report: BenchReport) -> Table:
    tolerance = report.settings.get("parity_tolerance", 0.0)
    score_tolerance = report.settings.get("parity_score_tolerance", 0.0)
    table = Table(
        title=f"Parity against PyTorch fp32 (boxes matched at IoU >= 0.9; flagged above {tolerance:.1%} "
        f"missed + extra or a score difference of {score_tolerance:g})"
    )
    columns = ("Backend", "Precision", "Runs On", "Frames", "Boxes", "Matched", "Missed", "Extra", "Max Score Diff",
               "Verdict")
    text_columns = ("Backend", "Precision", "Runs On", "Verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in text_columns else "right")
    for p in report.parity:
        if p.status not in ("ok", "reference"):
            status = Text(f"{p.status}: {p.reason}", style=STATUS_STYLE[p.status])
            table.add_row(p.backend, p.precision or "-", *["-"] * 7, status)
            continue
        score = f"{p.max_score_diff:.2e}" if p.max_score_diff is not None else "-"
        verdict = Text("DIVERGES", style="red") if p.flagged else Text("same", style="green")
        if p.status == "reference":
            verdict = Text("reference")
        counts = (p.frames, p.reference_boxes, p.matched, p.missed, p.extra)
        table.add_row(p.backend, p.precision or "-", p.runs_on or "-", *map(str, counts), score, verdict)
    return table


def backend_table(report: BenchReport) -> Table:
    table = Table(title=f"Backends on {report.environment['gpu']['name']}")
    for column in ("Backend", "Status", "Runs as", "Peak GPU Memory", "Load: Candidates / Kept"):
        table.add_column(column, justify="left" if column in ("Backend", "Status", "Runs as") else "right")
    for b in report.backends:
        runs_as = ", ".join(f"{v}" for k, v in b.runner.items() if k in ("device", "precision")) or "-"
        load = [b.detection_load.get(key) for key in ("candidates_per_frame", "kept_per_frame")]
        load_cell = " / ".join(f"{v:.1f}" if v is not None else "-" for v in load) if b.detection_load else "-"
        table.add_row(
            b.name, Text(b.status, style=STATUS_STYLE[b.status]), runs_as, _mib(b.peak_memory_bytes), load_cell
        )
    return table


def verdict_table(rec) -> Table:
    need = rec.need
    if not rec.measured:
        table = Table(title="Backends here")
        table.add_column("Backend")
        table.add_column("Verdict")
        for v in rec.verdicts:
            table.add_row(v.backend, Text(v.verdict, style="green" if v.meets else ""))
        return table
    table = Table(
        title=f"{need.cameras} camera(s) x {need.fps:g} FPS = {need.total_fps:.1f} FPS, P99 budget "
              f"{need.latency_ms:g} ms"
    )
    for column in ("Backend", "Mode", "Measured At", "FPS vs Needed", "P99 ms vs Budget", "Verdict"):
        table.add_column(
            column, justify="right" if "vs" in column else "left", no_wrap=column in ("Backend", "Mode", "Verdict")
        )
    for v in rec.verdicts:
        e = v.estimate
        verdict = Text(v.verdict, style="green" if v.meets else ("red" if e else ""))
        if e is None:
            table.add_row(v.backend, "-", "-", f"- / {need.total_fps:.1f}", f"- / {need.latency_ms:g}", verdict)
            continue
        where = f"{e.measured_cameras} cam, {'open loop' if e.load == 'open' else 'saturation'}"
        where += " (extrapolated)" if e.extrapolated else ""
        fps = f"{e.throughput_fps:.1f} {'>=' if e.throughput_fps >= need.total_fps else '<'} {need.total_fps:.1f}"
        if e.load == "open":
            fps = f"{e.throughput_fps:.1f} served, {e.dropped} dropped"
        p99 = f"{e.p99_ms:.1f} {'<=' if e.p99_ms <= need.latency_ms else '>'} {need.latency_ms:g}"
        table.add_row(v.backend, e.mode, where, fps, p99, verdict)
    return table


def summary_table(scenario: str) -> Table:
    from reidctl.apps.reference import SUMMARY

    table = Table(title="Reference guide summary (not measured here)")
    for column in ("Scenario", "Recommended Backend", "Reason"):
        table.add_column(column)
    for name, (backend, reason) in SUMMARY.items():
        style = "bold green" if name == scenario else None
        table.add_row(name, backend, reason, style=style)
    return table


def capacity_table(results, fps: float, latency_ms: float) -> Table:
    table = Table(
        title=f"Capacity at {fps:g} FPS per camera, P99 <= {latency_ms:g} ms and no frame dropped "
        "(deploy.sh's detect in real time, this machine)"
    )
    for column in ("Backend", "Most Cameras", "Runs (cameras: P99)", "Note"):
        table.add_column(column, justify="right" if column == "Most Cameras" else "left")
    for r in results:
        if r.outcome is None:
            table.add_row(r.backend, "-", "-", Text(f"{r.status}: {r.reason}", style=STATUS_STYLE[r.status]))
            continue
        runs = "; ".join(f"{run.cameras}: {run.latency.p99_ms:.1f} ms ({run.dropped} dropped)" for run in r.runs)
        note = "" if r.outcome.resolved else "run budget spent before the search closed"
        if r.outcome.at_limit:
            note = "never failed: may serve more"
        if r.status == "failed":
            note = f"failed: {r.reason}"
        table.add_row(r.backend, str(r.outcome.cameras), runs, note)
    return table
