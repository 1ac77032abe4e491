"""`reidctl bench` and `reidctl recommend`.

Only light modules at the top (`reidctl --help` must not import torch): the measurement and recommendation code
is imported inside the commands.
"""

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.markup import escape
from rich.text import Text

from reidctl.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigOpt,
    ConfOpt,
    DeviceOpt,
    Fp16Opt,
    ModelOpt,
    ModelTypeOpt,
    NmsOpt,
    NumClassesOpt,
    TestSizeOpt,
    build_config,
    command,
    console,
    err_console,
    fail,
    parse_size,
    with_model_options,
)
from reidctl.config import load_config, to_dict
from reidctl.apps.bench_report import DEFAULT_BENCH_PATH, BenchReport, BenchSettings, parse_cameras, plot_path_for
from reidctl.io.atomic import write_text_atomic
from reidctl.io.paths import refuse_foreign_files, refuse_shared_paths

STATUS_STYLE = {"ok": "green", "unavailable": "yellow", "failed": "red"}
EXIT_VERIFY_FAILED = 1  # a measured FAIL; bad input exits 2


JitterOpt = Annotated[
    float,
    typer.Option(
        "--jitter",
        help="Open loop through a server: each send time moves by up to +-jitter/2 of the frame period (0 <= jitter "
        "< 1). In-process runs play their cameras at a fixed rate, as `detect --realtime` does.",
    ),
]

def _ms(value: float) -> str:
    return f"{value:.2f}"


def _mib(value: int | None) -> str:
    return f"{value / 2**20:.0f} MiB" if value is not None else "-"


def _single_table(report: BenchReport) -> Table:
    table = Table(title="Single Stream Results, ms (frame in host memory -> (N, 7) on host)")
    for column in ("Backend", "Avg Time", "Min", "Max", "Std Dev", "P50", "P95", "P99", "FPS"):
        table.add_column(column, justify="left" if column == "Backend" else "right", no_wrap=column == "Backend")
    for b in report.backends:
        if b.single_stream:
            s = b.single_stream
            cells = (s.avg_ms, s.min_ms, s.max_ms, s.std_ms, s.p50_ms, s.p95_ms, s.p99_ms)
            table.add_row(b.name, *map(_ms, cells), f"{s.fps:.2f}")
    return table


def _stage_table(report: BenchReport) -> Table:
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


def _multi_table(report: BenchReport) -> Table:
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


def _open_loop_table(report: BenchReport) -> Table:
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


def _parity_table(report: BenchReport) -> Table:
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


def _backend_table(report: BenchReport) -> Table:
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


@command(
    "bench",
    "Measure every backend on this machine: single- and multi-stream latency (avg/min/max/std/P50/P95/P99), FPS and "
    "GPU memory; in process the cameras go through `reidctl detect`'s pipeline.",
)
def bench(
    backends: Annotated[
        str,
        typer.Option(
            "--backends", "-b", help="'all' or a comma list of backends (pytorch, onnxruntime, tensorrt, triton)."
        ),
    ] = "all",
    iters: Annotated[
        int, typer.Option("--iters", help="Measured requests per run (single stream, each camera count and mode).")
    ] = 1000,
    warmup: Annotated[
        int,
        typer.Option(
            "--warmup",
            help="Untimed requests before each run (in-process multi-stream runs: a first, unrecorded run of "
            "detect's pipeline).",
        ),
    ] = 100,
    cameras: Annotated[
        str, typer.Option("--cameras", help="Concurrent camera counts for the multi-stream runs, e.g. 1,4,16.")
    ] = "1,4",
    source: Annotated[
        Optional[str],
        typer.Option(
            "--source",
            "-s",
            help="Video file, image or image folder to take frames from (up to 64, decoded before any run and "
            "cycled). Default: synthetic frames.",
        ),
    ] = None,
    frame_size: Annotated[
        Optional[str], typer.Option("--frame-size", help="Synthetic frame size HEIGHTxWIDTH (default: the test size).")
    ] = None,
    max_batch: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch",
            min=1,
            help="Largest batch of the in-process multi-stream runs, as `detect --max-batch` (default: detect's, the "
            "cameras shared by the devices, at most 16).",
        ),
    ] = None,
    fps: Annotated[
        Optional[float],
        typer.Option(
            "--fps",
            help="Open loop: each camera sends frames at this rate, for every camera count of --cameras (in "
            "process: detect's pipeline with the cameras in real time, as `detect --realtime`; through a server: a "
            "client thread per camera on its own clock); late and dropped frames are counted.",
        ),
    ] = None,
    seconds: Annotated[
        float,
        typer.Option(
            "--seconds", help="Measured seconds of each open-loop run (after half a second of the same load)."
        ),
    ] = 3.0,
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", help="Latency budget in ms: an open-loop frame answered later is late.")
    ] = 100.0,
    jitter: JitterOpt = 0.0,
    saturation: Annotated[
        Optional[bool],
        typer.Option(
            "--saturation/--no-saturation",
            help="Also run the closed-loop (saturation) multi-stream runs (default: only without --fps).",
        ),
    ] = None,
    parity: Annotated[
        bool,
        typer.Option(
            "--parity",
            help="Run the same frames through every backend and precision and compare the detections with"
            " PyTorch "
            "fp32; a backend that diverges is flagged and never recommended.",
        ),
    ] = False,
    parity_tolerance: Annotated[
        float,
        typer.Option(
            "--parity-tolerance",
            help="Most boxes missed or extra (scores >= 0.1), as a fraction of the reference's"
            " boxes, before a backend"
            " is flagged.",
        ),
    ] = 0.02,
    parity_score_tolerance: Annotated[
        float,
        typer.Option(
            "--parity-score-tolerance", help="Largest score difference of a matched box before a backend is flagged."
        ),
    ] = 0.05,
    client_processes: Annotated[
        int,
        typer.Option(
            "--client-processes",
            help="Processes that send a server's closed-loop requests, the cameras split over them: one Python "
                 "process's requests are paced by its GIL, which can leave a server on several GPUs waiting.",
        ),
    ] = 1,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Result JSON; the plot is written beside it as .png.")
    ] = DEFAULT_BENCH_PATH,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")] = True,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    model_type: ModelTypeOpt = None,
    num_classes: NumClassesOpt = None,
    device: DeviceOpt = None,
    test_size: TestSizeOpt = None,
    conf: ConfOpt = None,
    nms: NmsOpt = None,
    fp16: Fp16Opt = None,
) -> None:
    from reidctl.apps.bench import benchmark, parse_backends

    refuse_shared_paths([("--output", output), ("the plot of --output", plot_path_for(output))],
                        [("--config", config), ("--model", model), ("--source", source)])
    cfg = build_config(config, model, model_type, num_classes, device, test_size, conf, nms, fp16)
    names, named = parse_backends(backends)
    settings = BenchSettings(
        backends=names,
        named=named,
        iters=iters,
        warmup=warmup,
        cameras=parse_cameras(cameras),
        source=source,
        frame_size=tuple(parse_size(frame_size)) if frame_size else None,
        max_batch=max_batch,
        fps=fps,
        seconds=seconds,
        latency_ms=latency_ms,
        jitter=jitter,
        saturation=fps is None if saturation is None else saturation,
        parity=parity,
        parity_tolerance=parity_tolerance,
        parity_score_tolerance=parity_score_tolerance,
        client_processes=client_processes,
    )
    report, plot = benchmark(cfg, settings, output, show_progress=progress)
    console.print(_backend_table(report))
    for b in report.backends:
        if b.reason:
            console.print(f"{b.name} {b.status}: {b.reason}", highlight=False, markup=False, soft_wrap=True)
    tables = (_single_table, _stage_table, _multi_table, _open_loop_table, _parity_table)
    for table in (make(report) for make in tables):
        if table.row_count:
            console.print(table)
    for p in report.parity:
        if p.flagged:
            console.print(
                f"[bold red]parity:[/] detections diverge from pytorch fp32 - {escape(p.describe())}; "
                "`reidctl recommend` will not choose it",
                soft_wrap=True,
            )
    console.print(f"wrote {output} and {plot}", soft_wrap=True)
    if report.stopped:
        err_console.print(f"{report.stopped}: {output} keeps what was measured before the stop, marked partial",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TERMINATED if report.stopped == "terminated" else EXIT_INTERRUPTED)
    missing = report.not_measured()
    if missing:
        kept = [b.name for b in report.backends if b.status == "ok"]
        kept += [f"{b.name} (partial)" for b in missing if b.single_stream]
        fail(
            f"not measured: {'; '.join(f'{b.name} {b.status}: {b.reason}' for b in missing)}; "
            f"{output} keeps the results of {', '.join(kept) or 'no backend'}"
        )


def _verdict_table(rec) -> Table:
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


def _summary_table(scenario: str) -> Table:
    from reidctl.apps.recommend import SUMMARY

    table = Table(title="Reference guide summary (not measured here)")
    for column in ("Scenario", "Recommended Backend", "Reason"):
        table.add_column(column)
    for name, (backend, reason) in SUMMARY.items():
        style = "bold green" if name == scenario else None
        table.add_row(name, backend, reason, style=style)
    return table


def _capacity_table(results, fps: float, latency_ms: float) -> Table:
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


def _search_capacity(need, config, plan, backends: str, limit: int, flagged: set[str], directory: Path):
    """--max-cameras: the search through the deployment's pipeline per backend here; the results and their report."""
    from reidctl.apps.bench import parse_backends
    from reidctl.apps.capacity import capacity_report, measure_capacity

    names = [name for name in parse_backends(backends)[0] if name not in flagged]
    results = []
    with console.status("capacity search") as spinner:

        def on_run(backend, run):
            spinner.update(
                f"capacity search: {backend}, {run.cameras} camera(s): "
                f"P99 {run.latency.p99_ms:.1f} ms, {run.dropped} dropped"
            )

        for name in names:
            results.append(measure_capacity(config, name, need.fps, need.latency_ms, plan, directory, limit,
                                            on_run=on_run))  # fmt: skip
    settings = {"fps": need.fps, "latency_ms": need.latency_ms, "seconds": plan.seconds, "cameras_from":
                plan.describe(need.cameras, need.fps)}  # fmt: skip
    return results, capacity_report(to_dict(config), config.detection.device, results, settings)


def _merge(report: BenchReport | None, searched: BenchReport) -> BenchReport:
    """The bench file's results with the search's open-loop runs added to each backend's."""
    if report is None:
        return searched
    by_name = {b.name: b for b in report.backends}
    for found in searched.backends:
        if found.name in by_name:
            by_name[found.name].multi_stream.extend(found.multi_stream)
        elif found.multi_stream:
            report.backends.append(found)
    return report


def _load_line(summary: dict) -> str:
    """The detection load a run saw, and a warning where the model found nothing to keep."""
    load = summary.get("detection_load") or {}
    kept, candidates = load.get("kept_per_frame"), load.get("candidates_per_frame")
    seen = f"detection load: {kept or 0:.0f} kept rows" + (f", {candidates:.0f} candidates" if candidates else "")
    if not kept:
        return seen + (" a frame. [yellow]Measured on an idle model: a crowded scene writes more rows; verify with "
                       "your checkpoint and scenes, or a load checkpoint (scripts/make_load_checkpoints.py)[/yellow]")
    return seen + " a frame"


def _verify(rec, config, plan, directory: Path) -> bool:
    from reidctl.apps.capacity import run_deployment

    need = rec.need
    if not rec.choice:
        console.print(
            f"[bold red]FAIL[/bold red]: no backend was chosen for {need.cameras} camera(s) x "
            f"{need.fps:g} FPS: nothing to verify"
        )
        return False
    what = plan.describe(need.cameras, need.fps)
    with console.status(f"verifying {rec.choice}: deploy.sh's detect on {what}"):
        run = run_deployment(config, rec.choice, plan, need.cameras, need.fps, need.latency_ms, directory)
    result, summary = run.result, run.summary
    passed = run.passes(need.latency_ms)
    verdict = "[bold green]PASS[/bold green]" if passed else "[bold red]FAIL[/bold red]"
    busy = ", ".join(f"{name} {share:.0%}" for name, share in summary["busy"].items())
    console.print(
        f"{verdict}: {rec.choice} (detect's pipeline, outputs on) served {need.cameras} camera(s) at {need.fps:g} "
        f"FPS on this machine ({what}): P99 {result.latency.p99_ms:.1f} ms "
        f"{'<=' if result.latency.p99_ms <= need.latency_ms else '>'} {need.latency_ms:g} ms, {result.late} late, "
        f"{result.dropped} dropped, {result.throughput_fps:.1f} of {need.total_fps:.1f} FPS; busiest: "
        f"{summary['limiting_stage']} ({busy}); {_load_line(summary)}",
        soft_wrap=True,
    )
    return passed


@command(
    "recommend",
    "Recommend a backend for N cameras at F FPS within a latency budget, from `reidctl bench` "
    "results (or the reference decision tree); find the most cameras this machine serves, verify, "
    "write what to deploy.",
)
def recommend_command(
    cameras: Annotated[int, typer.Option("--cameras", help="Number of cameras to serve.")] = 1,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second each camera must get.")] = 30.0,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Per-request P99 latency budget in ms.")] = 100.0,
    bench_file: Annotated[
        Optional[Path],
        typer.Option(
            "--bench",
            help=f"Bench result JSON (default: {DEFAULT_BENCH_PATH} if present; without one the reference decision "
                 "tree answers).",
        ),
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the recommendation as JSON.")] = None,
    max_cameras: Annotated[
        bool,
        typer.Option(
            "--max-cameras",
            help="Search, per backend here, the most cameras at --fps that keep P99 within --latency-ms with no "
            "frame dropped, each run what deploy.sh runs (detect's readers, batch loops and outputs on generated clips "
            "or --sources, in real time; doubling, then bisection), and recommend from those runs too.",
        ),
    ] = False,
    backends: Annotated[
        str,
        typer.Option(
            "--backends", "-b", help="Backends --max-cameras searches: 'all' (those that can run here) or a comma list."
        ),
    ] = "all",
    camera_limit: Annotated[int, typer.Option("--camera-limit", min=1, help="Most cameras --max-cameras tries.")] = 64,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Run what deploy.sh runs (detect with its outputs, the cameras in real time: generated clips at "
            "--resolution, or --sources) at --cameras x --fps on this machine; print PASS or FAIL with the measured "
            "P99, dropped frames, the busiest stage and the detection load, and exit 1 on FAIL.",
        ),
    ] = False,
    deploy: Annotated[
        Optional[Path],
        typer.Option(
            "--deploy",
            help="Write what to deploy into this folder: config.yaml (loads with --config) and deploy.sh CAMERA... "
            "(setup-triton / build-engine with the chosen batching, then the detect that --verify runs).",
        ),
    ] = None,
    seconds: Annotated[
        float,
        typer.Option("--seconds", min=0.1, help="Seconds of camera time in each run of --max-cameras and --verify."),
    ] = 5.0,
    resolution: Annotated[
        str,
        typer.Option(
            "--resolution",
            help="HxW of the clip --verify and --max-cameras generate for every camera, when --sources is not "
            "given: the cameras' resolution.",
        ),
    ] = "1080x1920",
    sources_file: Annotated[
        Optional[Path],
        typer.Option(
            "--sources",
            help="--verify and --max-cameras run these cameras (detect's --sources format: one per line, NAME=URL), "
            "repeated up to the camera count, instead of generated clips.",
        ),
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    model_type: ModelTypeOpt = None,
    num_classes: NumClassesOpt = None,
    device: DeviceOpt = None,
    test_size: TestSizeOpt = None,
    fp16: Fp16Opt = None,
    conf: ConfOpt = None,
    nms: NmsOpt = None,
) -> None:
    """The model options apply on top of the bench file's configuration (or --config's, without one)."""
    from reidctl.apps.bench_report import load_report
    from reidctl.apps.capacity import CameraPlan
    from reidctl.apps.recommend import (
        DEPLOY_FILES,
        DEPLOYED_OUTPUTS,
        Need,
        config_from_dict,
        find_bench,
        recommend,
        who_serves,
        write_deploy,
    )
    from reidctl.io.sources import read_source_list

    need = Need(cameras, fps, latency_ms).validate()
    path = find_bench(bench_file)
    deploy_files = [("--deploy", deploy / name) for name in DEPLOY_FILES] if deploy else []
    refuse_shared_paths([("--json", json_path), *deploy_files],
                        [("--bench", path), ("--config", config), ("--model", model), ("--sources", sources_file)])
    if deploy:
        outputs = {Path(path).parts[0] for path in DEPLOYED_OUTPUTS.values()}  # what its deploy.sh wrote there
        refuse_foreign_files(deploy, [*DEPLOY_FILES, *outputs], "--deploy")
    report = load_report(path) if path else None
    base = config_from_dict(report.config) if report else load_config(config)
    config_dict = to_dict(with_model_options(base, model, model_type, num_classes, device, test_size, conf, nms, fp16))
    if report:
        report.config = config_dict  # what is deployed and verified: the measured setup with the options given here
    plan = CameraPlan(parse_size(resolution), seconds, read_source_list(sources_file) if sources_file else None)
    # --verify and --max-cameras generate their clips and write their outputs here; all of it goes at the end
    with tempfile.TemporaryDirectory(prefix="reidctl-recommend-") as work_dir:
        work = Path(work_dir)
        if max_cameras:
            flagged = {b.name for b in report.backends if report.parity_flagged(b)} if report else set()
            results, searched = _search_capacity(need, config_from_dict(config_dict), plan, backends, camera_limit,
                                                 flagged, work)  # fmt: skip
            console.print(_capacity_table(results, need.fps, need.latency_ms))
            best = max((r for r in results if r.outcome), key=lambda r: r.outcome.cameras, default=None)
            if best:
                gpu = searched.environment["gpu"]["name"]
                more = " or more" if best.outcome.at_limit else ""
                subject, verb = who_serves(searched.environment).rsplit(" ", 1)
                console.print(
                    f"[bold]{subject} ({escape(gpu)}) {verb} up to {best.outcome.cameras}{more} camera(s) "
                    f"at {need.fps:g} FPS within {need.latency_ms:g} ms on {best.backend}.[/bold]",
                    soft_wrap=True,
                )
            report = _merge(report, searched)
        source = f"{path or 'no bench file'} and this machine's capacity search" if max_cameras else str(path)
        rec = recommend(need, report, config_dict, source=source)
        if not rec.measured:
            console.print(_summary_table(rec.scenario))
        console.print(_verdict_table(rec))
        for line in rec.reasoning:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if rec.choice:
            mode = f" ({rec.mode})" if rec.mode else ""
            caveat = "" if rec.measured else " [yellow]- not measured[/yellow]"
            console.print(f"[bold]Recommended: {rec.choice}{mode}[/bold]{caveat}")
            console.print(Syntax(rec.config_snippet, "yaml", theme="ansi_dark", background_color="default"))
        deployed = None
        if deploy and rec.choice:
            deployed, script = write_deploy(rec, deploy)
            console.print(f"wrote {deployed} and {script}", soft_wrap=True)
        if json_path:
            write_text_atomic(json_path, json.dumps(rec.to_dict(), indent=2))
            console.print(f"wrote {json_path}", soft_wrap=True)
        if verify and not _verify(rec, load_config(deployed) if deployed else config_from_dict(rec.deploy_config or {}),
                                  plan, work):  # fmt: skip
            raise typer.Exit(EXIT_VERIFY_FAILED)
        if deploy and not rec.choice:
            fail(f"nothing written to {deploy}: no backend meets the need")
