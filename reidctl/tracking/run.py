"""`reidctl track`: ByteTrack's association on saved detections, per camera, with the same outputs as detect."""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.config import TrackingConfig
from reidctl.errors import ReidctlError, Terminated
from reidctl.io.atomic import check_output_path, ensure_writable_dir, write_text_atomic
from reidctl.tracking.byte import ByteTracker
from reidctl.tracking.evaluate import Evaluation, evaluate, ground_truth_sequences, pair_sequences
from reidctl.tracking.inputs import CameraDetections, read_detections
from reidctl.tracking.outputs import MOTTrackWriter, SequenceInfo, TrackJSONLWriter

DEFAULT_OUTPUT_DIR = Path("runs/track")
DEFAULT_FPS = 30.0


@dataclass
class TrackRequest:
    """What to write. ``mot``: a file for one camera, a directory (<camera>.txt each) for several."""

    mot: Path | None = None
    jsonl: Path | None = None
    summary_json: Path | None = None
    eval_dir: Path | None = None
    fps: float | None = None  # None: the seqinfo.ini beside a MOT file, else 30


@dataclass
class TrackResult:
    summary: dict
    written: list[Path] = field(default_factory=list)
    evaluation: Evaluation | None = None
    stopped: str | None = None  # "interrupted" or "terminated"


def mot_paths(names: list[str], mot: Path | None) -> dict[str, tuple[Path, Path]]:
    """Camera -> (tracking file, its seqinfo.ini): beside a single file; <dir>/<camera>/seqinfo.ini for several."""
    if mot is None:
        return {}
    single = len(names) == 1
    if single and mot.is_dir():
        raise ReidctlError(f"--mot {mot} is a directory: with one camera it names a file")
    if not single and mot.exists() and not mot.is_dir():
        raise ReidctlError(f"--mot {mot} is a file: with {len(names)} cameras it names a directory "
                           "(one file per camera)")
    if single:
        return {names[0]: (mot, mot.parent / "seqinfo.ini")}
    return {name: (mot / f"{name}.txt", mot / name / "seqinfo.ini") for name in names}


def run_track(config: TrackingConfig, paths: list[Path], request: TrackRequest) -> TrackResult:
    """Track every camera of ``paths``; bad input fails before any output is opened."""
    cameras = read_detections(paths)
    if not cameras:
        raise ReidctlError("no detections in " + ", ".join(map(str, paths)))
    for name, camera in cameras.items():
        if any(s in name for s in ("/", "\\")) or name in (".", ".."):
            raise ReidctlError(f"camera name '{name}' in {camera.source} cannot name an output file")
    names = list(cameras)
    if request.eval_dir is not None:  # ground truth checked before any work
        pair_sequences(dict.fromkeys(names, Path()), ground_truth_sequences(request.eval_dir))
    mot = request.mot
    if mot is None and request.jsonl is None:
        mot = DEFAULT_OUTPUT_DIR / f"{names[0]}.txt" if len(names) == 1 else DEFAULT_OUTPUT_DIR
    with tempfile.TemporaryDirectory(prefix="reidctl-track-") as scratch:
        target = mot
        if target is None and request.eval_dir is not None:  # --eval alone: tracking files in a scratch folder
            target = Path(scratch) / (f"{names[0]}.txt" if len(names) == 1 else "mot")
        targets = mot_paths(names, target)
        for path in (request.jsonl, request.summary_json):
            if path is not None:
                check_output_path(path)
        for file, seqinfo in targets.values():
            check_output_path(file)
            ensure_writable_dir(seqinfo.parent)
        result = _track(config, cameras, request, targets)
        if request.eval_dir is not None and not result.stopped:
            result.evaluation = evaluate(request.eval_dir, {name: file for name, (file, _) in targets.items()})
            result.summary["evaluation"] = dataclasses.asdict(result.evaluation)
        if mot is None:
            result.written = [path for path in result.written if not path.is_relative_to(scratch)]
    if request.summary_json:
        write_text_atomic(request.summary_json, json.dumps(result.summary, indent=2))
        result.written.append(request.summary_json)
    return result


def _track(config: TrackingConfig, cameras: dict[str, CameraDetections], request: TrackRequest,
           targets: dict[str, tuple[Path, Path]]) -> TrackResult:
    mot_writers = {}
    jsonl = None
    published = False
    stopped = None
    per_camera = []
    try:
        jsonl = TrackJSONLWriter(request.jsonl) if request.jsonl else None
        for name, camera in cameras.items():
            fps = request.fps or camera.fps or DEFAULT_FPS
            if name in targets:
                file, seqinfo = targets[name]
                mot_writers[name] = MOTTrackWriter(file, seqinfo, SequenceInfo(name, fps, 0, camera.width,
                                                                               camera.height))
            per_camera.append(_track_camera(config, camera, fps, mot_writers.get(name), jsonl))
        published = True
    except KeyboardInterrupt as exc:
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        published = True  # every finished frame is kept
    finally:
        written = [writer.path for writer in [*mot_writers.values(), jsonl] if writer and writer.close(published)]
        written += [writer.seqinfo_path for writer in mot_writers.values() if published]
    summary = {
        "cameras": per_camera,
        "frames": sum(c["frames"] for c in per_camera),
        "detections": sum(c["detections"] for c in per_camera),
        "tracks": sum(c["tracks"] for c in per_camera),
        "tracking": dataclasses.asdict(config),
    }
    return TrackResult(summary, written, stopped=stopped)


def _track_camera(config: TrackingConfig, camera: CameraDetections, fps: float, mot: MOTTrackWriter | None,
                  jsonl: TrackJSONLWriter | None) -> dict:
    tracker = ByteTracker(config, fps)
    times, rows, detections = [], 0, 0
    for frame_index, name, dets in camera.frames:
        start = time.perf_counter()
        tracks = tracker.update(dets, frame_index)
        times.append(time.perf_counter() - start)
        if mot:
            mot.write(frame_index, tracks)
        if jsonl:
            jsonl.write(camera.name, frame_index, tracks, name)
        rows += len(tracks)
        detections += len(dets)
    counts = tracker.counts
    return {
        "name": camera.name, "source": str(camera.source), "fps": fps, "frames": len(camera.frames),
        "detections": detections, "tracks": counts.total, "active": counts.active, "lost": counts.lost,
        "rows": rows, "update_ms_p50": round(statistics.median(times) * 1e3, 4) if times else None,
    }
