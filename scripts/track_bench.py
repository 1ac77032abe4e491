"""How long one tracker update takes per camera-frame: ByteTrack's association with 100 detections and 50 live tracks.

50 people walk across a 1920x1080 frame, each seen by a high-score box; 50 more boxes fall in the low-score band
(second association, never a new track), so every frame holds 100 detections and the camera keeps 50 tracks.
Prints the median and P99 of ``ByteTracker.update`` over ``--frames`` frames after a warm-up.
Goal: a median <= 0.5 ms on a 2-core CPU machine.

    PYTHONPATH=$PWD python scripts/track_bench.py [--frames 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from reidctl.config import TrackingConfig
from reidctl.tracking import ByteTracker

PEOPLE = 50
WARMUP = 50


def frames(count: int, seed: int = 0):
    """(100, 7) float32 detection rows per frame: 50 people with high scores, 50 low-score boxes."""
    rng = np.random.default_rng(seed)
    size = np.array([60.0, 160.0])
    start = rng.uniform([0, 0], [1920 - size[0], 1080 - size[1]], (PEOPLE, 2))
    velocity = rng.normal(0, 2, (PEOPLE, 2))
    for index in range(count):
        corner = (start + velocity * index) % [1920 - size[0], 1080 - size[1]] + rng.normal(0, 1, (PEOPLE, 2))
        people = np.c_[corner, corner + size, rng.uniform(0.7, 1.0, PEOPLE), np.ones(PEOPLE), np.zeros(PEOPLE)]
        clutter_corner = rng.uniform([0, 0], [1800, 900], (PEOPLE, 2))
        clutter = np.c_[clutter_corner, clutter_corner + rng.uniform(20, 120, (PEOPLE, 2)),
                        rng.uniform(0.15, 0.45, PEOPLE), np.ones(PEOPLE), np.zeros(PEOPLE)]
        yield np.concatenate([people, clutter]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="timed frames (median and P99 reported)")
    count = parser.parse_args().frames
    tracker = ByteTracker(TrackingConfig())
    times, live = [], []
    for index, detections in enumerate(frames(WARMUP + count)):
        start = time.perf_counter()
        tracker.update(detections, index)
        elapsed = time.perf_counter() - start
        if index >= WARMUP:
            times.append(elapsed * 1e3)
            counts = tracker.counts
            live.append(counts.active + counts.lost)
    times.sort()
    print(f"{len(times)} frames, 100 detections, {statistics.median(live):.0f} live tracks (median)")
    print(f"update: median {statistics.median(times):.3f} ms, P99 {times[int(0.99 * (len(times) - 1))]:.3f} ms "
          "per camera-frame (goal: median <= 0.5 ms)")


if __name__ == "__main__":
    main()
