"""`reidctl detect SOURCE`."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.app import (
    EXIT_INTERRUPTED,
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
)
from reidctl.engine.detector import create_detector
from reidctl.engine.pipeline import run_detection
from reidctl.engine.stats import LatencySummary
from reidctl.io.atomic import write_text_atomic
from reidctl.io.sources import open_source
from reidctl.io.writers import ImageDirWriter, JSONLWriter, MOTWriter, VideoWriter


def _summary(run, detector) -> dict:
    stats = LatencySummary.from_samples(run.latencies) if run.latencies else None
    latency = {"p50": stats.p50_ms, "p95": stats.p95_ms, "p99": stats.p99_ms, "mean": stats.avg_ms} if stats else dict.fromkeys(("p50", "p95", "p99", "mean"))
    peak = detector.runner.peak_memory_bytes()
    return {
        **detector.runner.describe(),
        "frames": run.frames,
        "detections": run.detections,
        "latency_ms": latency,
        "fps": stats.fps if stats else None,
        "wall_fps": run.frames / run.wall_seconds if run.wall_seconds else None,
        "gpu_memory_peak_mib": peak / 2**20 if peak is not None else None,
        "interrupted": run.interrupted,
    }


def _print_summary(summary: dict) -> None:
    table = Table(title="Detection summary")
    for column in ("Backend", "Frames", "Detections", "p50", "p95", "p99", "FPS", "GPU memory"):
        table.add_column(column, justify="right" if column != "Backend" else "left")
    lat = summary["latency_ms"]
    fmt = lambda v, unit="ms": f"{v:.2f} {unit}" if v is not None else "-"  # noqa: E731
    table.add_row(
        f"{summary['backend']} ({summary.get('precision', '')} {summary['device']})".replace("( ", "("),
        str(summary["frames"]),
        str(summary["detections"]),
        fmt(lat["p50"]),
        fmt(lat["p95"]),
        fmt(lat["p99"]),
        f"{summary['fps']:.1f}" if summary["fps"] else "-",
        fmt(summary["gpu_memory_peak_mib"], "MiB"),
    )
    console.print(table)


@command("detect", "Detect people in an image, image folder, video, camera index or RTSP/HTTP stream.")
def detect(
    source: Annotated[str, typer.Argument(help="Image file, directory of images, video file, camera index (0) or rtsp:// / http:// URL.")],
    backend: Annotated[Optional[str], typer.Option("--backend", "-b", help="Backend to run (default: detection.backend of the config).")] = None,
    mot: Annotated[Optional[Path], typer.Option("--mot", help="MOT17 detection file to write (frame,-1,x,y,w,h,score,-1,-1,-1). Default: runs/detect/<source>.txt when no other output is given.")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="JSON-lines file to write: one object per frame with the (N, 7) rows.")] = None,
    save_video: Annotated[Optional[Path], typer.Option("--save-video", help="Annotated video to write (.avi or .mp4).")] = None,
    save_images: Annotated[Optional[Path], typer.Option("--save-images", help="Directory for annotated images, one per frame.")] = None,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Write the summary (latency p50/p95/p99, FPS, memory) as JSON.")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", min=1, help="Stop after this many frames (live sources run until Ctrl-C otherwise).")] = None,
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
    cfg = build_config(config, model, model_type, num_classes, device, test_size, conf, nms, fp16)
    if not any((mot, jsonl, save_video, save_images)):
        stem = Path(source.rstrip("/")).stem if not source.isdigit() else f"camera{source}"
        mot = Path("runs/detect") / f"{stem or 'stream'}.txt"
    with open_source(source) as frames, create_detector(cfg, backend) as detector:
        writers = []
        try:
            writers += [MOTWriter(mot)] if mot else []
            writers += [JSONLWriter(jsonl)] if jsonl else []
            writers += [VideoWriter(save_video, frames.fps)] if save_video else []
            writers += [ImageDirWriter(save_images)] if save_images else []
            run = run_detection(detector, frames, writers, max_frames, show_progress=progress)
        except BaseException:
            for writer in writers:
                writer.close(complete=False)
            raise
        for writer in writers:
            writer.close(complete=True)
        summary = _summary(run, detector)
    _print_summary(summary)
    for path in (mot, jsonl, save_video, save_images):
        if path:
            console.print(f"wrote {path}")
    if summary_json:
        write_text_atomic(summary_json, json.dumps(summary, indent=2))
    if run.interrupted:
        err_console.print(f"interrupted after {run.frames} frames; outputs hold every completed frame")
        raise typer.Exit(EXIT_INTERRUPTED)
