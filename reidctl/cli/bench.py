"""`reidctl bench` and `reidctl recommend`.

Only light modules at the top (`reidctl --help` must not import torch): the measurement and recommendation code
is imported inside the commands.
"""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from reidctl.cli.app import (
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
    fail,
    parse_size,
)
from reidctl.config import load_config, to_dict
from reidctl.engine.bench_report import DEFAULT_BENCH_PATH, BenchReport, BenchSettings, parse_cameras
from reidctl.io.atomic import write_text_atomic

STATUS_STYLE = {"ok": "green", "unavailable": "yellow", "failed": "red"}


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


def _multi_table(report: BenchReport) -> Table:
    table = Table(title="Multi-Stream Results, latency per request in ms (closed loop: a camera sends its next frame when its result is back)")
    for column in ("Backend", "Mode", "Cameras", "Total FPS", "Avg Latency", "P95", "P99", "Avg Batch"):
        table.add_column(column, justify="left" if column in ("Backend", "Mode") else "right", no_wrap=column in ("Backend", "Mode"))
    for b in report.backends:
        for s in b.multi_stream:
            batch = f"{s.mean_batch:.2f}" if s.mean_batch is not None else "-"
            table.add_row(b.name, s.mode, str(s.cameras), f"{s.throughput_fps:.2f}", _ms(s.latency.avg_ms), _ms(s.latency.p95_ms), _ms(s.latency.p99_ms), batch)
    return table


def _backend_table(report: BenchReport) -> Table:
    table = Table(title=f"Backends on {report.environment['gpu']['name']}")
    for column in ("Backend", "Status", "Runs as", "Peak GPU Memory", "Load: Candidates / Kept"):
        table.add_column(column, justify="left" if column in ("Backend", "Status", "Runs as") else "right")
    for b in report.backends:
        runs_as = ", ".join(f"{v}" for k, v in b.runner.items() if k in ("device", "precision")) or "-"
        load = [b.load.get(key) for key in ("candidates_per_frame", "kept_per_frame")]
        load_cell = " / ".join(f"{value:.1f}" if value is not None else "-" for value in load) if b.load else "-"
        table.add_row(b.name, Text(b.status, style=STATUS_STYLE[b.status]), runs_as, _mib(b.peak_memory_bytes), load_cell)
    return table


@command("bench", "Measure every backend on this machine: single- and multi-stream latency (avg/min/max/std/P50/P95/P99), FPS and GPU memory.")
def bench(
    backends: Annotated[str, typer.Option("--backends", "-b", help="'all' or a comma list of backends (pytorch, onnxruntime, tensorrt, triton).")] = "all",
    iters: Annotated[int, typer.Option("--iters", help="Measured requests per run (single stream, each camera count and mode).")] = 1000,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed requests before each run.")] = 100,
    cameras: Annotated[str, typer.Option("--cameras", help="Concurrent camera counts for the multi-stream runs, e.g. 1,4,16.")] = "1,4",
    source: Annotated[Optional[str], typer.Option("--source", "-s", help="Video file, image or image folder to take frames from (up to 64, cycled). Default: synthetic frames.")] = None,
    frame_size: Annotated[Optional[str], typer.Option("--frame-size", help="Synthetic frame size HEIGHTxWIDTH (default: the test size).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the in-process micro-batcher forms.")] = 8,
    max_delay_ms: Annotated[float, typer.Option("--max-delay-ms", help="How long the micro-batcher waits for more frames after the first, in ms (0: take what is waiting; under load frames queue while the GPU works, so batches form by themselves).")] = 0.0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Result JSON; the plot is written beside it as .png.")] = DEFAULT_BENCH_PATH,
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
    from reidctl.engine.bench import benchmark, parse_backends

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
        max_delay_ms=max_delay_ms,
    )
    report, plot = benchmark(cfg, settings, output, show_progress=progress)
    console.print(_backend_table(report))
    for b in report.backends:
        if b.reason:
            console.print(f"{b.name} {b.status}: {b.reason}", highlight=False, markup=False, soft_wrap=True)
    for table in (_single_table(report), _stage_table(report), _multi_table(report)):
        if table.row_count:
            console.print(table)
    console.print(f"wrote {output} and {plot}", soft_wrap=True)
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
    table = Table(title=f"{need.cameras} camera(s) x {need.fps:g} FPS = {need.total_fps:.1f} FPS, P99 budget {need.latency_ms:g} ms")
    for column in ("Backend", "Mode", "Measured At", "FPS vs Needed", "P99 ms vs Budget", "Verdict"):
        table.add_column(column, justify="right" if "vs" in column else "left", no_wrap=column in ("Backend", "Mode", "Verdict"))
    for v in rec.verdicts:
        e = v.estimate
        verdict = Text(v.verdict, style="green" if v.meets else ("red" if e else ""))
        if e is None:
            table.add_row(v.backend, "-", "-", f"- / {need.total_fps:.1f}", f"- / {need.latency_ms:g}", verdict)
            continue
        where = f"{e.measured_cameras} cam" + (" (extrapolated)" if e.extrapolated else "")
        fps = f"{e.throughput_fps:.1f} {'>=' if e.throughput_fps >= need.total_fps else '<'} {need.total_fps:.1f}"
        p99 = f"{e.p99_ms:.1f} {'<=' if e.p99_ms <= need.latency_ms else '>'} {need.latency_ms:g}"
        table.add_row(v.backend, e.mode, where, fps, p99, verdict)
    return table


def _summary_table(scenario: str) -> Table:
    from reidctl.engine.recommend import SUMMARY

    table = Table(title="Reference guide summary (not measured here)")
    for column in ("Scenario", "Recommended Backend", "Reason"):
        table.add_column(column)
    for name, (backend, reason) in SUMMARY.items():
        style = "bold green" if name == scenario else None
        table.add_row(name, backend, reason, style=style)
    return table


@command("recommend", "Recommend a backend for N cameras at F FPS within a latency budget, from `reidctl bench` results (or the reference decision tree).")
def recommend_command(
    cameras: Annotated[int, typer.Option("--cameras", help="Number of cameras to serve.")] = 1,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second each camera must get.")] = 30.0,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Per-request P99 latency budget in ms.")] = 100.0,
    bench_file: Annotated[Optional[Path], typer.Option("--bench", help=f"Bench result JSON (default: {DEFAULT_BENCH_PATH} if present; without one the reference decision tree answers).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the recommendation as JSON.")] = None,
    config: ConfigOpt = None,
) -> None:
    from reidctl.engine.recommend import Need, find_bench, recommend

    path = find_bench(bench_file)
    rec = recommend(Need(cameras, fps, latency_ms), path, to_dict(load_config(config)))
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
    if json_path:
        write_text_atomic(json_path, json.dumps(rec.to_dict(), indent=2))
        console.print(f"wrote {json_path}", soft_wrap=True)
