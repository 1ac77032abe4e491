"""`reidctl detect SOURCE [SOURCE ...]`: one camera or many, batched on the GPU."""

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from reidctl.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    InferenceOptions,
    ModelOptions,
    TrackingOptions,
    command,
    console,
    err_console,
    fail,
    warn,
)
from reidctl.config import DEFAULT_TIMEOUT_S
from reidctl.io.cores import short_of_cores_warning


def _ms(value) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _frames(camera: dict) -> str:
    return f"{camera['frames']}/{camera['total']}" if camera["total"] else str(camera["frames"])


def statistics_table(stats: dict, title: str) -> Table:
    """Per camera: frames, FPS, latency P50/P99 (decoded -> detections back), dropped frames, reconnects."""
    table = Table(title=title)
    for column in ("Camera", "State", "Frames", "FPS", "P50 ms", "P99 ms", "Dropped", "Reconnects"):
        table.add_column(column, justify="left" if column in ("Camera", "State") else "right")
    rows = (
        [*stats["cameras"], {"name": "all", "state": "", "total": None, **stats}]
        if len(stats["cameras"]) > 1
        else stats["cameras"]
    )
    for row in rows:
        latency = row["latency_ms"]
        table.add_row(
            row["name"],
            row["state"],
            _frames(row),
            f"{row['fps']:.1f}" if row["fps"] else "-",
            _ms(latency["p50"]),
            _ms(latency["p99"]),
            str(row["dropped"]),
            str(row["reconnects"]),
        )
    batch = f"mean batch {stats['mean_batch']:.2f}" if stats["mean_batch"] else "batches: -"
    busy = ", ".join(f"{name} {share:.0%}" for name, share in stats["busy"].items())
    limit = f"; busiest: {stats['limiting_stage']} ({busy})" if stats["limiting_stage"] else ""
    by_output = ", ".join(f"{label} {ms:.2f}" for label, ms in sorted(
        stats["write_ms_by_output"].items(), key=lambda pair: -pair[1]))
    stages = ", ".join(f"{name} {ms:.2f}" + (f" ({by_output})" if name == "write" and by_output else "")
                       for name, ms in stats["stages_ms_per_frame"].items() if ms is not None)
    servers = "".join(f"\nserver {server['url']}: {'live' if server['live'] else 'DOWN'}, {server['cameras']} sending, "
                      f"{server['cameras_moved_away']} moved away" for server in stats.get("servers", ()))
    tracks = stats.get("tracks")
    tracked = f"; tracks {tracks['active']} active, {tracks['lost']} lost, {tracks['total']} total" if tracks else ""
    # the run's summary only: the bundled server's own stages, and the cores each side kept busy
    served = stats.get("server_ms_per_frame")
    server_stages = ("\nserver ms per frame: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in served.items())
                     if served else "")
    cores = {side: used for side, used in (stats.get("cpu_cores_busy") or {}).items() if used is not None}
    cores_busy = ("\ncores busy: " + ", ".join(f"{side} {used:.1f}" for side, used in cores.items())) if cores else ""
    if host := stats.get("host_cpu"):  # every process on the host, and what its hypervisor took
        cores_busy += (f"\nhost: {host['cores_busy']:.1f} of {host['cores']} cores busy, {host['cores_stolen']:.1f} "
                       "stolen by the hypervisor" + ("" if host["cpu_pressure"] is None else
                                                     f", a thread waiting for a core {host['cpu_pressure']:.0%} "
                                                     "of the time"))
    waits = stats["wait_ms"]
    waited = (f"\nwait for a step, P99 ms: behind its camera's frames {_ms(waits['behind_its_camera']['p99'])}, "
              f"for a batch loop {_ms(waits['for_a_loop']['p99'])}")
    if slowest := stats.get("slowest_steps"):  # the run's summary only: its longest step, and a server's part of it
        longest = slowest[0]
        waited += f"; longest step {_ms(longest['ms'])}" + (
            "" if longest["server_ms"] is None else f" ({_ms(longest['server_ms'])} in the server)")
    table.caption = (f"{batch}; {stats['detections']} detections{tracked}{limit}\nms per frame: {stages or '-'}"
                     f"{waited}{server_stages}{cores_busy}{servers}")
    return table


@command(
    "detect", "Detect people on one or many cameras: images, image folders, videos, camera indices, RTSP/HTTP streams."
)
def detect(
    sources: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Cameras: image, directory of images, video file, camera index (0) or rtsp:// / http:// URL, "
                 "each optionally NAME=SOURCE.",
            show_default=False,
        ),
    ] = None,
    sources_file: Annotated[
        Optional[Path],
        typer.Option("--sources", help="File with one source per line ('#' comments, optional NAME=SOURCE)."),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option("--backend", "-b", help="Backend to run (default: detection.backend of the config)."),
    ] = None,
    mot: Annotated[
        Optional[Path],
        typer.Option(
            "--mot",
            help="MOT17 detections (frame,-1,x,y,w,h,score,-1,-1,-1): a file for one source, "
                 "a directory (one <camera>.txt each) for several. "
                 "With --track, MOT17 tracks (frame,id,x,y,w,h,score,-1,-1,-1) "
                 "with a seqinfo.ini beside the file (<camera>/seqinfo.ini for several). "
                 "Default: runs/detect/ when no other output is given.",
        ),
    ] = None,
    jsonl: Annotated[
        Optional[Path],
        typer.Option("--jsonl", help="JSON-lines file: one object per frame with its camera, frame and (N, 7) rows "
                                     "(with --track also its tracks as [id, x, y, w, h, score])."),
    ] = None,
    save_video: Annotated[
        Optional[Path],
        typer.Option(
            "--save-video",
            help="Annotated video: a file (.avi or .mp4) for one source, a directory (<camera>.mp4 each) for several.",
        ),
    ] = None,
    save_images: Annotated[
        Optional[Path],
        typer.Option(
            "--save-images",
            help="Directory for annotated images, one per frame (a subdirectory per camera for several).",
        ),
    ] = None,
    summary_json: Annotated[
        Optional[Path],
        typer.Option(
            "--summary-json",
            help="Write the summary "
                 "(per camera and in total: frames, FPS, latency, dropped, reconnects, batch sizes) as JSON.",
        ),
    ] = None,
    no_output: Annotated[
        bool,
        typer.Option(
            "--no-output",
            help="Write no detection output (no runs/detect/ default either); --summary-json may still be given.",
        ),
    ] = False,
    max_frames: Annotated[
        Optional[int],
        typer.Option(
            "--max-frames",
            min=1,
            help="Stop each camera after this many frames (live sources run until Ctrl-C otherwise).",
        ),
    ] = None,
    realtime: Annotated[
        bool,
        typer.Option(
            "--realtime",
            help="Play files at their own frame rate, as cameras would: "
                 "frames the detector could not take in time are dropped and counted.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds to wait when opening or reading a network stream before it counts as failed "
                 "(it then reconnects).",
        ),
    ] = DEFAULT_TIMEOUT_S,
    max_batch: Annotated[
        Optional[int],
        typer.Option("--max-batch", min=1, help="Most frames per GPU batch (default: cameras / devices, at most 16)."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Stop at an unreadable image or a truncated video instead of warning and going on, "
            "and refuse to start while a stream cannot be opened "
            "(without it the other cameras start and the stream is retried).",
        ),
    ] = False,
    track: Annotated[
        bool,
        typer.Option(
            "--track",
            help="Track people per camera with ByteTrack's association (the tracking: config section): "
                 "--mot writes MOT17 tracks, --jsonl adds each frame's tracks, --save-video draws track ids.",
        ),
    ] = False,
    crops: Annotated[
        Optional[Path],
        typer.Option(
            "--crops",
            help="Directory for ReID crops of the tracks (<camera>/<track id>/<frame>.jpg, best.jpg, an index); "
                 "needs --track.",
        ),
    ] = None,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            help="Show the live table (per camera FPS, latency, dropped frames, reconnects).",
        ),
    ] = True,
    model_options: ModelOptions = ModelOptions(),
    inference: InferenceOptions = InferenceOptions(),
    tracking: TrackingOptions = TrackingOptions(),
) -> None:
    from rich.live import Live

    from reidctl.apps.pipeline import DetectOptions, OutputRequest, run_detect
    from reidctl.io.paths import refuse_shared_paths
    from reidctl.io.sources import camera_specs, read_source_list

    entries = list(sources or []) + (read_source_list(sources_file) if sources_file else [])
    specs = camera_specs(entries)
    outputs = {"--mot": mot, "--jsonl": jsonl, "--save-video": save_video, "--save-images": save_images,
               "--summary-json": summary_json, "--crops": crops}
    inputs = [("--config", model_options.config), ("--model", model_options.model), ("--sources", sources_file),
              *((f"camera {spec.name}", spec.source) for spec in specs if not spec.live)]
    refuse_shared_paths(list(outputs.items()), inputs)
    cfg = tracking.apply(model_options.load(inference))
    request = OutputRequest(mot, jsonl, save_video, save_images, summary_json, no_output, track, crops)
    options = DetectOptions(realtime, max_frames, timeout, strict, max_batch)
    with Live(console=err_console, refresh_per_second=4, transient=True) if progress else nullcontext() as live:
        show = (lambda stats: live.update(statistics_table(stats, "detect"))) if progress else None
        result = run_detect(cfg, specs, request, options, backend, warn=warn, on_update=show)
    summary = result.summary
    console.print(f"{summary['backend']} ({summary.get('precision', '')} {summary['device']})".replace("( ", "("))
    console.print(statistics_table(summary, "Detection summary"))
    if short := short_of_cores_warning(summary):
        warn(f"warning: {short}")
    for path in result.written:
        console.print(f"wrote {path}")
    finished = summary["outputs"]["frames"]  # a frame is finished once every output holds it
    frames = f"{finished} frame{'s' if finished != 1 else ''}"
    if result.failed:
        fail(f"stopped after {frames}: {result.stopped}; the outputs hold every finished frame")
    if result.stopped:
        err_console.print(f"{result.stopped} after {frames}; the outputs hold every finished frame")
        raise typer.Exit(EXIT_TERMINATED if result.stopped == "terminated" else EXIT_INTERRUPTED)
