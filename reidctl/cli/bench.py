"""`reidctl bench`: measure every backend on this machine, print the results, write them as JSON and a plot.

Only light modules at the top (`reidctl --help` must not import torch): the measurement code is imported inside the
command.
"""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from reidctl.apps.bench_report import DEFAULT_BENCH_PATH, BenchSettings, parse_cameras, plot_path_for
from reidctl.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    InferenceOptions,
    ModelOptions,
    command,
    console,
    err_console,
    fail,
    live_progress,
    parse_size,
)
from reidctl.core.registry import REFERENCE_PRECISION, reference_backend
from reidctl.cli.tables import backend_table, multi_table, open_loop_table, parity_table, single_table, stage_table
from reidctl.io.paths import refuse_shared_paths

JitterOpt = Annotated[
    float,
    typer.Option(
        "--jitter",
        help="Open loop through a server: each send time moves by up to +-jitter/2 of the frame period "
        "(0 <= jitter < 1). In-process runs play their cameras at a fixed rate, as `detect --realtime` does.",
    ),
]


@contextlib.contextmanager
def bench_bar(show: bool) -> Iterator[Callable[[str, str, int, int], None] | None]:
    """bench's live bars, one per backend with the phase under way: the callback that the bench reports to
    (None: no bar)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

    with live_progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[phase]}"), TimeElapsedColumn()) as progress:  # fmt: skip
        tasks = {}

        def show_backend(backend: str, phase: str, done: int, total: int) -> None:
            if backend not in tasks:
                progress.start()
                tasks[backend] = progress.add_task(backend, total=total, phase=phase)
            progress.update(tasks[backend], completed=done, phase=phase)

        yield show_backend


@command(
    "bench",
    "Measure every backend on this machine: single- and multi-stream latency (avg/min/max/std/P50/P95/P99), "
    "FPS and GPU memory; in process the cameras go through `reidctl detect`'s pipeline.",
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
            help="Untimed requests before each run "
            "(in-process multi-stream runs: a first, unrecorded run of detect's pipeline).",
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
            help="Video file, image or image folder to take frames from "
            "(up to 64, decoded before any run and cycled). Default: synthetic frames.",
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
            help="Largest batch of the in-process multi-stream runs, as `detect --max-batch` "
            "(default: detect's, the cameras shared by the devices, at most 16).",
        ),
    ] = None,
    fps: Annotated[
        Optional[float],
        typer.Option(
            "--fps",
            help="Open loop: each camera sends frames at this rate, for every camera count of --cameras "
            "(in process: detect's pipeline with the cameras in real time, as `detect --realtime`; "
            "through a server: a client thread per camera on its own clock); late and dropped frames are counted.",
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
            help="Run the same frames through every backend and precision "
            "and compare the detections with PyTorch fp32; a backend that diverges is flagged and never recommended.",
        ),
    ] = False,
    parity_tolerance: Annotated[
        float,
        typer.Option(
            "--parity-tolerance",
            help="Most boxes missed or extra (scores >= 0.1), as a fraction of the reference's boxes, "
            "before a backend is flagged.",
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
            help="Processes that send a server's closed-loop requests, the cameras split over them: "
                 "one Python process's requests are paced by its GIL, "
                 "which can leave a server on several GPUs waiting.",
        ),
    ] = 1,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Result JSON; the plot is written beside it as .png.")
    ] = DEFAULT_BENCH_PATH,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")] = True,
    model_options: ModelOptions = ModelOptions(),
    inference: InferenceOptions = InferenceOptions(),
) -> None:
    from reidctl.apps.bench import benchmark, parse_backends

    refuse_shared_paths([("--output", output), ("the plot of --output", plot_path_for(output))],
                        [("--config", model_options.config), ("--model", model_options.model), ("--source", source)])
    cfg = model_options.load(inference)
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
    with bench_bar(progress) as on_progress:
        report, plot = benchmark(cfg, settings, output, on_progress)
    console.print(backend_table(report))
    for b in report.backends:
        if b.reason:
            console.print(f"{b.name} {b.status}: {b.reason}", highlight=False, markup=False, soft_wrap=True)
    tables = (single_table, stage_table, multi_table, open_loop_table, parity_table)
    for table in (make(report) for make in tables):
        if table.row_count:
            console.print(table)
    for p in report.parity:
        if p.flagged:
            console.print(
                f"[bold red]parity:[/] detections diverge from {reference_backend()} {REFERENCE_PRECISION} - "
                f"{escape(p.describe())}; `reidctl recommend` will not choose it",
                soft_wrap=True,
            )
    console.print(f"wrote {output} and {plot}", soft_wrap=True)
    if report.stopped:
        err_console.print(f"{report.stopped}: {output} keeps what was measured before the stop, marked partial",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TERMINATED if report.stopped == "terminated" else EXIT_INTERRUPTED)
    missing = report.not_measured()
    if missing:
        whole, partial = report.kept()
        kept = [b.name for b in whole] + [f"{b.name} (partial)" for b in partial]
        fail(
            f"not measured: {'; '.join(f'{b.name} {b.status}: {b.reason}' for b in missing)}; "
            f"{output} keeps the results of {', '.join(kept) or 'no backend'}"
        )
