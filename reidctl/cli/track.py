"""`reidctl track DETS [DETS ...]`: ByteTrack's association on saved detections, per camera."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ConfigOpt,
    TrackingOptions,
    command,
    console,
    err_console,
)


def _metric(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def tracks_table(summary: dict) -> Table:
    table = Table(title="Tracks")
    for column in ("Camera", "FPS", "Frames", "Detections", "Tracks", "Active", "Lost", "Update P50 ms"):
        table.add_column(column, justify="left" if column == "Camera" else "right")
    for camera in summary["cameras"]:
        table.add_row(camera["name"], f"{camera['fps']:g}", str(camera["frames"]), str(camera["detections"]),
                      str(camera["tracks"]), str(camera["active"]), str(camera["lost"]),
                      "-" if camera["update_ms_p50"] is None else f"{camera['update_ms_p50']:.3f}")
    return table


def evaluation_table(evaluation: dict) -> Table:
    table = Table(title=f"Evaluation ({evaluation['tool']})")
    for column in ("Sequence", "HOTA", "MOTA", "IDF1"):
        table.add_column(column, justify="left" if column == "Sequence" else "right")
    for name, metrics in evaluation["sequences"].items():
        table.add_row(name, _metric(metrics["HOTA"]), _metric(metrics["MOTA"]), _metric(metrics["IDF1"]))
    if evaluation["tool"] != "TrackEval":
        table.caption = "HOTA needs TrackEval (pip install trackeval)"
    return table


@command("track", "Track people on saved detections (detect's JSON lines or MOT17 files) with ByteTrack's association.")
def track(
    detections: Annotated[
        list[Path],
        typer.Argument(
            help="Detections: detect's JSON lines (.jsonl, many cameras) or MOT17 detection files "
                 "(frame,-1,x,y,w,h,score,-1,-1,-1; one camera each, "
                 "named by the file, or by <seq> in <seq>/det/det.txt).",
            show_default=False,
        ),
    ],
    mot: Annotated[
        Optional[Path],
        typer.Option(
            "--mot",
            help="MOT17 tracks (frame,id,x,y,w,h,score,-1,-1,-1) with a seqinfo.ini: a file for one camera "
                 "(seqinfo.ini beside it), a directory for several (<camera>.txt and <camera>/seqinfo.ini). "
                 "Default: runs/track/ when no other output is given.",
        ),
    ] = None,
    jsonl: Annotated[
        Optional[Path],
        typer.Option("--jsonl", help="JSON-lines file: per camera frame, its tracks as [id, x, y, w, h, score]."),
    ] = None,
    summary_json: Annotated[
        Optional[Path],
        typer.Option(
            "--summary-json", help="Write the summary (per camera: frames, detections, tracks, evaluation) as JSON."
        ),
    ] = None,
    fps: Annotated[
        Optional[float],
        typer.Option(
            "--fps",
            min=0.001,
            help="Camera frame rate, which scales track_buffer (default: seqinfo.ini beside a MOT file, else 30).",
        ),
    ] = None,
    eval_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--eval",
            help="MOTChallenge ground truth (<seq>/gt/gt.txt and <seq>/seqinfo.ini): "
                 "report HOTA, MOTA and IDF1 (TrackEval; motmetrics without HOTA where it is absent).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    tracking: TrackingOptions = TrackingOptions(),
    config: ConfigOpt = None,
) -> None:
    from reidctl.config import load_config
    from reidctl.tracking.run import TrackRequest, run_track

    cfg = tracking.apply(load_config(config))
    result = run_track(cfg.tracking, detections, TrackRequest(mot, jsonl, summary_json, eval_dir, fps))
    if json_output:
        console.print_json(json.dumps(result.summary))
    else:
        console.print(tracks_table(result.summary))
        if "evaluation" in result.summary:
            console.print(evaluation_table(result.summary["evaluation"]))
        for path in result.written:
            console.print(f"wrote {path}")
    if result.stopped:
        err_console.print(f"{result.stopped}; the outputs hold every finished frame")
        raise typer.Exit(EXIT_TERMINATED if result.stopped == "terminated" else EXIT_INTERRUPTED)
