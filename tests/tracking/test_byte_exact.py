"""The tracker's outputs, bit for bit, on random sequences: ids, boxes and scores of every frame, as recorded in
data/byte_exact.npz from the tracker that matched ByteTrack's BYTETracker. A speed-up must not change one bit.

The fixture holds each frame's ids and a digest of its whole (M, 6) output. After a deliberate change of behaviour,
rewrite it with ``python tests/tracking/test_byte_exact.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from reidctl.config import TrackingConfig
from reidctl.tracking import ByteTracker

FIXTURE = Path(__file__).parent / "data" / "byte_exact.npz"
FRAMES = 300
# (seed, tracker settings): the published defaults, IoU alone, a short buffer at another frame rate, other thresholds.
SEQUENCES = {
    "default": (1, {}, 30.0),
    "mot20": (2, {"mot20": True}, 30.0),
    "short_buffer": (3, {"track_buffer": 5}, 25.0),
    "thresholds": (4, {"track_thresh": 0.6, "match_thresh": 0.9, "low_thresh": 0.2, "min_box_area": 2000.0}, 30.0),
    "crowd_mot20": (5, {"mot20": True, "track_buffer": 10}, 30.0),
}


def sequence(seed: int, frames: int = FRAMES):
    """(frame number, (N, 7) float32 detections) of a random camera: people walking and bouncing off the borders,
    hidden for stretches, scored in every band (high, low, ignored) and on the default thresholds, duplicate and
    near-duplicate boxes (ties for LAPJV), clutter, dropped frames and empty frames. Built from uniform draws and
    arithmetic only, so every NumPy gives the same boxes."""
    rng = np.random.default_rng(seed)
    people = 16
    size = np.c_[20 + 100 * rng.random(people), 50 + 250 * rng.random(people)]
    room = np.array([1280.0, 720.0]) - size
    start = rng.random((people, 2)) * room
    velocity = 12 * rng.random((people, 2)) - 6
    visible = rng.random(people) < 0.7
    frame = 0 if rng.random() < 0.5 else 1  # some sequences start with an empty frame
    for index in range(frames):
        visible ^= rng.random(people) < np.where(visible, 0.04, 0.15)
        travelled = (start + velocity * index) % (2 * room)
        corner = np.minimum(travelled, 2 * room - travelled) + 4 * rng.random((people, 2)) - 2
        band = rng.random(people)
        score = np.where(band < 0.75, 0.55 + 0.45 * rng.random(people),
                         np.where(band < 0.95, 0.1 + 0.4 * rng.random(people), 0.1 * rng.random(people)))
        boxes = np.c_[corner, corner + size, score, 0.8 + 0.2 * rng.random(people), np.zeros(people)][visible]
        twins = boxes[rng.random(len(boxes)) < 0.1].copy()
        twins[:, :4] += (6 * rng.random((len(twins), 4)) - 3) * (rng.random((len(twins), 1)) < 0.5)
        clutter_count = int(8 * rng.random())
        clutter_corner = rng.random((clutter_count, 2)) * [1200, 600]
        clutter = np.c_[clutter_corner, clutter_corner + 10 + 110 * rng.random((clutter_count, 2)),
                        rng.random(clutter_count), np.ones(clutter_count), np.zeros(clutter_count)]
        detections = np.concatenate([boxes, twins, clutter]).astype(np.float32)
        on_threshold = rng.random(len(detections)) < 0.03
        detections[on_threshold, 4] = np.array([0.1, 0.5, 0.6])[(3 * rng.random(on_threshold.sum())).astype(int)]
        detections[on_threshold, 5] = 1
        if index == 0 and frame == 1 or rng.random() < 0.02:
            detections = detections[:0]
        yield frame, detections
        frame += 1 if rng.random() < 0.9 else 2 + int(3 * rng.random())


def outputs(name: str) -> list[np.ndarray]:
    seed, settings, fps = SEQUENCES[name]
    tracker = ByteTracker(TrackingConfig(**settings), fps)
    return [tracker.update(detections, frame) for frame, detections in sequence(seed)]


def digest(tracks: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tracks, "<f8").tobytes(), digest_size=8).digest()


def record() -> dict[str, np.ndarray]:
    """Per sequence: the ids of all frames end to end, each frame's track count and each frame's output digest."""
    fixture = {}
    for name in SEQUENCES:
        tracks = outputs(name)
        fixture[f"{name}_ids"] = np.concatenate([t[:, 0] for t in tracks]).astype(np.int32)
        fixture[f"{name}_counts"] = np.array([len(t) for t in tracks], np.int32)
        fixture[f"{name}_digests"] = np.frombuffer(b"".join(digest(t) for t in tracks), np.uint64)
    return fixture


@pytest.mark.parametrize("name", SEQUENCES)
def test_tracks_are_bit_identical_to_the_recorded_ones(name):
    expected = np.load(FIXTURE)
    tracks = outputs(name)
    counts = np.array([len(t) for t in tracks], np.int32)
    np.testing.assert_array_equal(counts, expected[f"{name}_counts"])
    np.testing.assert_array_equal(np.concatenate([t[:, 0] for t in tracks]), expected[f"{name}_ids"])
    digests = np.frombuffer(b"".join(digest(t) for t in tracks), np.uint64)
    differing = np.flatnonzero(digests != expected[f"{name}_digests"])
    assert not len(differing), f"boxes or scores differ from frame {differing[0]} on"


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **record())
