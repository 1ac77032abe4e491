"""What handing frames from the cameras' readers to the batch loops costs: `reidctl detect`'s hub alone.

``--cameras`` readers play small frames from memory without dropping any (as `detect` does flat out) and two batch
loops take them, each "step" a sleep of ``--step-ms`` that gives up the interpreter as a model call does. Reported:
frames a second through the hub, and the process's CPU time per frame, most of it threads waking to take the
interpreter lock. The best of ``--repeats`` runs counts.

    PYTHONPATH=$PWD python scripts/hub_bench.py --cameras 16 --step-ms 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np

from reidctl.apps.cameras import Camera, Hub
from reidctl.apps.pipeline import SWITCH_INTERVAL_S
from reidctl.io.sources import CameraSpec, MemorySource

BATCH_LOOPS = 2


def run(cameras: int, frames: int, step_s: float) -> tuple[float, float]:
    """(frames a second, CPU seconds a frame) of one run."""
    hub = Hub()
    image = np.zeros((8, 8, 3), np.uint8)
    members = [Camera(CameraSpec(f"cam{i}", "memory"), MemorySource([image], frames), hub, lambda: None, print)
               for i in range(cameras)]

    def batch_loop() -> None:
        while True:
            batch = hub.take_batch(cameras)
            if not batch:
                if hub.done():
                    return
                continue
            time.sleep(step_s)
            hub.release(batch)

    started, cpu = time.perf_counter(), time.process_time()
    for camera in members:
        camera.start()
    loops = [threading.Thread(target=batch_loop) for _ in range(BATCH_LOOPS)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    total = cameras * frames
    return total / (time.perf_counter() - started), (time.process_time() - cpu) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--frames", type=int, default=2000, help="frames per camera")
    parser.add_argument("--step-ms", type=float, default=5.0, help="each batch loop's step, a sleep")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as detect runs
    runs = [run(args.cameras, args.frames, args.step_ms / 1000) for _ in range(args.repeats)]
    fps, cpu = max(runs, key=lambda r: r[0])[0], min(r[1] for r in runs)
    print(json.dumps({"cameras": args.cameras, "step_ms": args.step_ms, "frames_per_second": round(fps),
                      "cpu_us_per_frame": round(cpu * 1e6, 1), "python": platform.python_version(),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
