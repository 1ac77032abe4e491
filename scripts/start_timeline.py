"""A `reidctl detect` run's first seconds, tenth by tenth: what the readers, the batch loops and the host did.

Runs `reidctl detect` with the given arguments in this process and records, besides its own summary:
  each reader's decodes (start, end), each detect step (end, time, frames), each dropped frame, the host's busy
  share from /proc/stat every 50 ms (all cores together), and where nvidia-smi exists the GPU's clocks and
  utilisation every 100 ms (scripts/perf.py's trace of a GPU step).
Prints one row per 100 ms of the first ``--seconds`` and writes everything to OUT/timeline.json (times in seconds
from the run's start). A run that drops frames only at its start shows here whether the readers, the steps or the
host were slow then (docs/PERFORMANCE.md, the `timeline_pytorch_rt_LOAD` steps).

    PYTHONPATH=$PWD python scripts/start_timeline.py OUT --seconds 1.5 -- \\
        cam01.mp4 ... cam16.mp4 --realtime --mot out/mot --jsonl out/d.jsonl --no-progress
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import reidctl.apps.cameras as cameras
import reidctl.apps.pipeline as pipeline
from perf import gpu_trace, parse_wrapper_args  # this folder's measurement runner (its nvidia-smi trace of a GPU step)
from reidctl.cli import app

SAMPLE_S = 0.05
ROW_S = 0.1


class Recorder:
    """Wraps the pipeline's reader, run and batch-loop hooks for one run and keeps what they saw."""

    def __init__(self):
        self.runs: list[pipeline._Run] = []
        self.decodes: list[tuple[str, float, float]] = []  # camera, start, end (perf_counter)
        self.busy: list[tuple[float, float]] = []  # when, the host's busy share since the sample before
        self._stop = threading.Event()

    def install(self) -> None:
        run_init, decode = pipeline._Run.__init__, cameras.Camera._decode
        recorder = self

        def init(run, *args, **kwargs):
            run_init(run, *args, **kwargs)
            recorder.runs.append(run)

        def timed_decode(camera, frames):
            start = time.perf_counter()
            frame = decode(camera, frames)
            recorder.decodes.append((camera.name, start, time.perf_counter()))
            return frame

        pipeline._Run.__init__, cameras.Camera._decode = init, timed_decode
        threading.Thread(target=self._sample_host, name="host-sampler", daemon=True).start()

    def _sample_host(self) -> None:
        def totals() -> tuple[int, int]:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
            return sum(values), values[3] + values[4]  # all, idle + iowait

        last = totals()
        while not self._stop.wait(SAMPLE_S):
            now = totals()
            elapsed, idle = now[0] - last[0], now[1] - last[1]
            self.busy.append((time.perf_counter(), 1.0 - idle / elapsed if elapsed else 0.0))
            last = now

    def stop(self) -> None:
        self._stop.set()


def rows(recorder: Recorder, run: pipeline._Run, seconds: float) -> list[dict]:
    started = run.started
    steps = [(s, end, n) for s, end, n in zip(run.step_seconds, run.step_ends, run.step_frames)]
    drops = [at for camera in run.hub.cameras for at in camera.drop_times]
    table = []
    for index in range(int(round(seconds / ROW_S))):
        low, high = started + index * ROW_S, started + (index + 1) * ROW_S
        decodes = [end - start for _, start, end in recorder.decodes if low <= end < high]
        ended = [(s, n) for s, end, n in steps if low <= end < high]
        busy = [share for at, share in recorder.busy if low <= at < high]
        table.append({
            "t_s": round(index * ROW_S, 2),
            "decodes": len(decodes),
            "decode_ms": round(1000 * sum(decodes) / len(decodes), 2) if decodes else None,
            "decode_ms_max": round(1000 * max(decodes), 2) if decodes else None,
            "steps": len(ended),
            "frames": sum(n for _, n in ended),
            "step_ms": round(1000 * sum(s for s, _ in ended) / len(ended), 2) if ended else None,
            "step_ms_max": round(1000 * max(s for s, _ in ended), 2) if ended else None,
            "dropped": sum(low <= at < high for at in drops),
            "host_busy": round(sum(busy) / len(busy), 3) if busy else None,
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for timeline.json (and gpu.csv where nvidia-smi exists)")
    parser.add_argument("--seconds", type=float, default=1.5, help="the first seconds printed, a row per 100 ms")
    args, detect_args = parse_wrapper_args(parser, "the arguments of reidctl detect")
    args.out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder()
    recorder.install()
    offset = time.time() - time.perf_counter()  # gpu.csv's time stamps are wall clock
    try:
        with gpu_trace(args.out / "gpu.csv", gpus=1):
            app(["detect", *detect_args], prog_name="reidctl", standalone_mode=False)
    finally:
        recorder.stop()
    if not recorder.runs:
        sys.exit("error: detect ended before its run started")
    run = recorder.runs[-1]
    table = rows(recorder, run, args.seconds)
    steps = zip(run.step_seconds, run.step_ends, run.step_frames)
    timeline = {
        "rows": table,
        "steps": [{"ended_s": round(end - run.started, 4), "ms": round(1000 * s, 2), "frames": n}
                  for s, end, n in steps],
        "dropped_s": sorted(round(at - run.started, 4) for c in run.hub.cameras for at in c.drop_times),
        "decodes": [{"camera": name, "start_s": round(start - run.started, 4), "ms": round(1000 * (end - start), 2)}
                    for name, start, end in recorder.decodes],
        "host_busy": [(round(at - run.started, 3), round(share, 3)) for at, share in recorder.busy],
        "gpu_csv_wall_clock_at_start": run.started + offset,
    }
    (args.out / "timeline.json").write_text(json.dumps(timeline) + "\n")
    header = list(table[0]) if table else []
    print(" ".join(f"{name:>13}" for name in header))
    for row in table:
        print(" ".join(f"{'' if value is None else value:>13}" for value in row.values()))


if __name__ == "__main__":
    main()
