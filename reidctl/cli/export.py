"""`reidctl export-onnx` and `reidctl build-engine`: the checkpoint -> ONNX -> TensorRT engine chain."""

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.app import (
    ConfigOpt,
    ModelOptions,
    command,
    console,
    live_progress,
    warn,
)
from reidctl.errors import ReidctlError
from reidctl.export.opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

if TYPE_CHECKING:  # imported when used: tensorrt's module imports torch and `reidctl --help` must not
    from reidctl.export.tensorrt import BuildProgress

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")]


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.1f} MiB"


@contextlib.contextmanager
def export_bar(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """export-onnx's live bar over the export's steps: the callback export_onnx reports to (None: no bar)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

    with live_progress(SpinnerColumn(), TextColumn("[bold]export-onnx"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.description}"), TimeElapsedColumn()) as progress:

        def show_step(step: str, done: int, total: int) -> None:
            if not progress.tasks:
                progress.start()
                progress.add_task(step, total=total)
            progress.update(progress.task_ids[0], description=step, completed=done, total=total)

        yield show_step


@contextlib.contextmanager
def build_bar(show: bool) -> Iterator[Callable[["BuildProgress"], None] | None]:
    """build-engine's live bars: the build's, and one for each TensorRT phase under way, indented by its depth
    (the callback build_engine reports to; None: no bar)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

    with live_progress(SpinnerColumn(), TextColumn("[bold]build-engine"), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        tasks, depths = {}, {}

        def show_phase(report: "BuildProgress") -> None:
            if report.phase not in tasks:
                progress.start()
                depths[report.phase] = 0 if report.parent is None else depths.get(report.parent, 0) + 1
                tasks[report.phase] = progress.add_task("  " * depths[report.phase] + report.phase, total=report.total)
            progress.update(tasks[report.phase], completed=report.done, total=report.total)
            if report.ended and report.parent is not None:  # a TensorRT phase leaves once over; the build stays
                progress.remove_task(tasks.pop(report.phase))
                del depths[report.phase]

        yield show_phase


def _print_table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")  # paths wrap instead of being cut
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


@command(
    "export-onnx",
    "Export the YOLOX checkpoint to ONNX (input 'images', output 'output') with reidctl metadata, "
    "verified with ONNX Runtime against PyTorch.",
)
def export_onnx_command(
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="ONNX file to write (default: detection.onnx_path, else the TensorRT engine path with .onnx).",
        ),
    ] = None,
    opset: Annotated[
        int, typer.Option("--opset", help=f"ONNX opset, {MIN_OPSET} (ByteTrack's) to {MAX_OPSET}.")
    ] = DEFAULT_OPSET,
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16/--fp32",
            help="Export the graph in half precision (fp16 input and weights, fp32 output); "
                 "TensorRT 11 needs this for fp16 engines.",
        ),
    ] = False,
    dynamic_batch: Annotated[
        bool,
        typer.Option("--dynamic-batch/--static-batch", help="Leave the batch dimension dynamic, or fix it to --batch."),
    ] = True,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size of a --static-batch graph.")] = 1,
    simplify: Annotated[
        bool, typer.Option("--simplify/--no-simplify", help="Simplify the graph with onnxslim.")
    ] = True,
    decode: Annotated[
        bool,
        typer.Option(
            "--decode/--no-decode",
            help="Decode boxes inside the graph (output (B, anchors, 5+C) in input pixels); "
                 "--no-decode keeps the raw head output as ByteTrack's export does.",
        ),
    ] = True,
    as_json: JsonOpt = False,
    progress: ProgressOpt = True,
    model_options: ModelOptions = ModelOptions(),
) -> None:
    from reidctl.export.onnx import default_onnx_path, export_onnx
    from reidctl.models.loader import load_detection_model

    if dynamic_batch and batch != 1:
        raise ReidctlError("--batch fixes the batch size of a --static-batch graph; add --static-batch")
    cfg = model_options.load()
    det = cfg.detection
    target = output or default_onnx_path(det)
    from reidctl.io.atomic import check_output_path
    from reidctl.io.paths import refuse_shared_paths

    refuse_shared_paths([("--output", target)], [("--config", model_options.config), ("--model", det.model_path)])
    check_output_path(target)  # before the model is loaded and traced
    yolox, spec = load_detection_model(det, warn)
    with export_bar(progress) as on_progress:
        result = export_onnx(
            yolox,
            spec,
            target,
            det.input_size,
            opset=opset,
            fp16=fp16,
            dynamic_batch=dynamic_batch,
            batch=batch,
            simplify=simplify,
            decode=decode,
            on_progress=on_progress,
        )
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    meta = result.metadata
    _print_table(
        "ONNX export",
        {
            "Path": result.path,
            "Model": f"{spec.label}, {meta.input_size[0]}x{meta.input_size[1]}",
            "Size": _mib(result.size_bytes),
            "Opset": result.opset,
            "Precision": meta.precision,
            "Batch": "dynamic" if meta.batch is None else meta.batch,
            "Output": "decoded" if meta.decoded else "raw head output",
            "Max abs diff (ORT vs PyTorch)": f"{result.comparison.max_abs_diff:.2e} "
            f"(box rel. {result.comparison.box_rel_diff:.1e}, "
            f"score {result.comparison.score_abs_diff:.1e})",
            "Export time": f"{result.seconds:.1f} s",
        },
    )


@command("build-engine", "Build a TensorRT engine from the ONNX export (TensorRT 10 or 11, on the GPU it will run on).")
def build_engine_command(
    onnx: Annotated[
        Optional[Path],
        typer.Option(
            "--onnx",
            help="ONNX file from `reidctl export-onnx` "
                 "(default: detection.onnx_path, else the engine path with .onnx).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Engine file to write (default: detection.tensorrt.engine_path); "
                 "its sidecar <engine>.json is written beside it.",
        ),
    ] = None,
    fp16: Annotated[
        Optional[bool],
        typer.Option(
            "--fp16/--fp32",
            help="fp16 engine (default: detection.tensorrt.fp16). TensorRT 11 needs an fp16 ONNX for it "
                 "(export-onnx --fp16).",
        ),
    ] = None,
    workspace: Annotated[
        Optional[int],
        typer.Option("--workspace", min=1, help="Builder workspace in MiB (default: detection.tensorrt.workspace)."),
    ] = None,
    min_batch: Annotated[
        Optional[int],
        typer.Option(
            "--min-batch",
            min=1,
            help="Smallest batch of the dynamic-batch profile (default: detection.tensorrt.min_batch).",
        ),
    ] = None,
    opt_batch: Annotated[
        Optional[int],
        typer.Option(
            "--opt-batch", min=1, help="Batch the profile is tuned for (default: detection.tensorrt.opt_batch)."
        ),
    ] = None,
    max_batch: Annotated[
        Optional[int],
        typer.Option(
            "--max-batch", min=1, help="Largest batch of the profile (default: detection.tensorrt.max_batch)."
        ),
    ] = None,
    timing_cache: Annotated[
        Optional[Path],
        typer.Option(
            "--timing-cache", help="TensorRT timing cache to read (if present) and update; speeds up rebuilds."
        ),
    ] = None,
    as_json: JsonOpt = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    from reidctl.export.onnx import default_onnx_path
    from reidctl.export.tensorrt import build_engine, sidecar_path
    from reidctl.io.paths import refuse_shared_paths

    given = {
        "fp16": fp16,
        "workspace": workspace,
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
    }
    det = ModelOptions(config).load(tensorrt=given).detection
    trt_cfg = det.tensorrt
    engine_path = output or Path(trt_cfg.engine_path)
    onnx_path = onnx or default_onnx_path(det)
    refuse_shared_paths([("--output", engine_path), ("the sidecar of --output", sidecar_path(engine_path))],
                        [("--config", config), ("--onnx", onnx_path)])
    with build_bar(progress) as on_progress:
        result = build_engine(
            onnx_path,
            engine_path,
            fp16=trt_cfg.fp16,
            workspace_mib=trt_cfg.workspace,
            min_batch=trt_cfg.min_batch,
            opt_batch=trt_cfg.opt_batch,
            max_batch=trt_cfg.max_batch,
            timing_cache=timing_cache,
            on_progress=on_progress,
            warn=warn,
        )
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    sidecar = result.sidecar
    profile = sidecar["profile"]
    _print_table(
        "TensorRT engine",
        {
            "Engine": result.engine_path,
            "Sidecar": sidecar_path(result.engine_path),
            "Size": _mib(result.size_bytes),
            "Precision": sidecar["precision"],
            "TensorRT": sidecar["tensorrt_version"],
            "GPU": f"{sidecar['gpu']['name']} (compute capability {sidecar['gpu']['compute_capability']})",
            "Batch profile": f"{profile['min_batch']} / {profile['opt_batch']} / {profile['max_batch']} "
            "(min / opt / max)",
            "Build time": f"{result.seconds:.1f} s",
        },
    )
