"""`reidctl detect`'s engine: frames from a source through a Detector into writers, with live progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from reidctl.engine.detector import Detector
from reidctl.io.sources import FrameSource


@dataclass
class DetectRun:
    frames: int = 0
    detections: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, end to end per frame
    wall_seconds: float = 0.0
    interrupted: bool = False


def run_detection(
    detector: Detector, source: FrameSource, writers: list, max_frames: int | None = None, show_progress: bool = True
) -> DetectRun:
    """Detect every frame; on Ctrl-C stop cleanly so the caller can publish complete outputs.

    The first frame is run once untimed: it pays for one-off work (CUDA-graph capture, autotuning).
    """
    run = DetectRun()
    total = min(source.total, max_frames) if source.total and max_frames else (source.total or max_frames)
    columns = [SpinnerColumn(), TextColumn("[bold]detect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fps]}"), TimeElapsedColumn()]
    started = time.perf_counter()
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("detect", total=total, fps="")
        try:
            for frame in source:
                if max_frames is not None and run.frames >= max_frames:
                    break
                if run.frames == 0:
                    detector.detect(frame.image)
                t0 = time.perf_counter()
                detections = detector.detect(frame.image)
                run.latencies.append(time.perf_counter() - t0)
                for writer in writers:
                    writer.write(frame.index, frame.name, frame.image, detections)
                run.frames += 1
                run.detections += len(detections)
                elapsed = time.perf_counter() - started
                progress.update(task, advance=1, fps=f"{run.frames / elapsed:.1f} FPS")
        except KeyboardInterrupt:
            run.interrupted = True
    run.wall_seconds = time.perf_counter() - started
    return run
