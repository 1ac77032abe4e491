"""Rows per second that `reidctl detect`'s text outputs format and write, at a crowd's rows per frame.

Each writer (MOT17 text, JSON lines) writes ``--frames`` frames of ``--rows`` detection rows (float32, boxes in
pixels, scores in [0, 1], as a detector gives them) through its real writer to a temporary file, and publishes it;
the best of ``--repeats`` runs counts. Measured three ways: NumPy a frame at a time or a step's 16 frames at once,
value by value in Python (the formatting the writers used before, kept as their fallback), and as `detect`'s output
stage does: a step's frames formatted at once in its formatting process, which appends the text to the file too.

    PYTHONPATH=$PWD python scripts/writer_bench.py --rows 520 --frames 400
    PYTHONPATH=$PWD python scripts/writer_bench.py --json
    PYTHONPATH=$PWD python scripts/writer_bench.py --busy-threads 2   # beside threads that hold the interpreter
    PYTHONPATH=$PWD python scripts/writer_bench.py --step-rows 32,128,256,1024 --busy-threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from reidctl.apps.pipeline import SWITCH_INTERVAL_S
from reidctl.io import formatter
from reidctl.io.formatter import FormattingProcess, track_and_format
from reidctl.io.formatting import jsonl_text_per_value, mot_text_per_value
from reidctl.io.sources import Frame
from reidctl.io.writers import FinishedFrame, JSONLWriter, MOTWriter


class PerValueMOTWriter(MOTWriter):
    @staticmethod
    def texts(items):
        return [mot_text_per_value(item.frame.index, item.detections) for item in items]


class PerValueJSONLWriter(JSONLWriter):
    @staticmethod
    def texts(items):
        return [jsonl_text_per_value(item.camera, item.frame.index, item.frame.name, item.detections) for item in items]


STEP = 16  # frames formatted a pass in the output stage's way: a step of 16 cameras
IN_CHILD = f"numpy, {STEP} frames a pass, in the formatting process"  # what `detect`'s output stage does
WRITERS = {("MOT17", "numpy", 1): MOTWriter, ("MOT17", f"numpy, {STEP} frames a pass", STEP): MOTWriter,
           ("MOT17", IN_CHILD, STEP): MOTWriter, ("MOT17", "python per value", 1): PerValueMOTWriter,
           ("JSONL", "numpy", 1): JSONLWriter, ("JSONL", f"numpy, {STEP} frames a pass", STEP): JSONLWriter,
           ("JSONL", IN_CHILD, STEP): JSONLWriter, ("JSONL", "python per value", 1): PerValueJSONLWriter}


def detector_rows(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 1900, size=(rows, 2))
    sizes = rng.uniform(10, 300, size=(rows, 2))
    scores = rng.uniform(0, 1, size=(rows, 2))
    return np.concatenate([corners, corners + sizes, scores, np.zeros((rows, 1))], axis=1).astype(np.float32)


def measure(writer_class, frames: list[np.ndarray], directory: Path, step: int,
            process: FormattingProcess | None) -> float:
    """Seconds to write every frame through a new writer and publish its file; with ``step`` above 1, the frames'
    text formatted ``step`` frames a pass, as the output stage does for a step's cameras (by ``process``, if given,
    a started formatting process)."""
    started = time.perf_counter()
    writer = writer_class(directory / "out.txt")
    for index, rows in enumerate(frames):
        if step > 1 and index % step == 0:
            batch = [FinishedFrame("camera", Frame(i, None, f"camera#{i}"), frames[i])
                     for i in range(index, min(index + step, len(frames)))]
            jobs = [(writer_class, list(range(len(batch))), [0] * len(batch))]
            if process:  # it appends the text to the file itself, and the writer takes the lengths
                writer.formatted.extend(process.run(batch, jobs, {0: (str(writer.tmp), writer.size)}).texts[0])
            else:
                writer.formatted.extend(track_and_format(batch, jobs, None).texts[0])
        writer.write(FinishedFrame("camera", Frame(index, None, f"camera#{index}"), rows))
    writer.close(publish=True)
    return time.perf_counter() - started


def step_costs(step_rows: list[int], directory: Path, steps: int = 30) -> list[dict]:
    """Mean ms a step of 16 frames (MOT and JSONL text made and written to a file), by the writer thread and by the
    formatting process, for each count of rows a step: where the one gets cheaper than the other."""
    formatter.ROWS_WORTH_A_REQUEST = 0  # the process takes every step, whatever its rows
    path = directory / "step.txt"
    path.touch()
    process = FormattingProcess([JSONLWriter, MOTWriter])
    jobs = [(MOTWriter, list(range(STEP)), [0] * STEP), (JSONLWriter, list(range(STEP)), [1] * STEP)]
    results = []
    for rows in step_rows:
        items = [FinishedFrame(f"camera{i}", Frame(i, None, f"camera{i}#{i}"), detector_rows(rows // STEP, i))
                 for i in range(STEP)]
        costs = {}
        for way in ("writer thread", "formatting process"):
            started = time.perf_counter()
            for _ in range(steps):
                if way == "formatting process":
                    process.run(items, jobs, {0: (str(path), 0), 1: (str(path), 0)})
                    continue
                fd = os.open(path, os.O_WRONLY)
                for texts in track_and_format(items, jobs, None).texts:
                    for text in texts:
                        os.pwrite(fd, text, 0)
                os.close(fd)
            costs[way] = (time.perf_counter() - started) / steps * 1000
        results.append({"rows_per_step": rows, "ms_per_step": costs})
    process.close()
    return results


def keep_the_interpreter_busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=520, help="detection rows per frame")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy-threads", type=int, default=0,
                        help="threads that keep the interpreter lock busy meanwhile, as detect's readers and batch "
                             "loops do (pure Python, with detect's 0.5 ms switch interval)")
    parser.add_argument("--step-rows", help="instead: mean ms a step of 16 frames with these rows (comma-separated) "
                                            "takes in the writer thread and in the formatting process, as JSON")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    stop = threading.Event()
    for _ in range(args.busy_threads):
        threading.Thread(target=keep_the_interpreter_busy, args=(stop,), daemon=True).start()
    if args.busy_threads:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    if args.step_rows:
        with tempfile.TemporaryDirectory() as directory:
            costs = step_costs([int(rows) for rows in args.step_rows.split(",")], Path(directory))
        stop.set()
        print(json.dumps({"busy_threads": args.busy_threads, "steps": costs}, indent=2))
        return
    frames = [detector_rows(args.rows, seed) for seed in range(16)]
    frames = [frames[i % len(frames)] for i in range(args.frames)]
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for (output, way, step), writer_class in WRITERS.items():
            count = max(args.frames // 8, 1) if way == "python per value" else args.frames  # the slow way: fewer
            process = FormattingProcess([writer_class]) if way == IN_CHILD else None
            best = min(measure(writer_class, frames[:count], Path(directory), step, process)
                       for _ in range(args.repeats))
            if process:
                process.close()
            rows = count * args.rows
            results.append({"output": output, "formatting": way, "rows_per_frame": args.rows, "frames": count,
                            "rows_per_second": rows / best, "ms_per_frame": best / count * 1000})
    stop.set()
    machine = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
               "machine": platform.machine(), "busy_threads": args.busy_threads}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    table = Table(title=f"Text outputs: format + write to a file, {args.rows} rows a frame (best of {args.repeats})")
    for column in ("Output", "Formatting", "Frames", "Rows/s", "ms/frame"):
        table.add_column(column, justify="left" if column in ("Output", "Formatting") else "right")
    for r in results:
        table.add_row(r["output"], r["formatting"], str(r["frames"]), f"{r['rows_per_second'] / 1e6:.2f} M",
                      f"{r['ms_per_frame']:.3f}")
    table.caption = ", ".join(f"{k} {v}" for k, v in machine.items())
    Console().print(table)


if __name__ == "__main__":
    main()
