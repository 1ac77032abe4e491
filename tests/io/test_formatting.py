"""MOT17 and JSON-lines text formatted with NumPy is the text Python's per-value formatting gives."""

import json

import numpy as np
import pytest

from reidctl.io.formatting import (
    jsonl_text,
    jsonl_text_per_value,
    jsonl_texts,
    mot_text,
    mot_text_per_value,
    mot_texts,
)

# Rounding ties and near-ties at 2 and 5 decimals, signs, zeros, large and tiny values.
EDGES = [-0.004, 0.004, 0.005, -0.005, 0.015, 1.005, 2.675, 0.125, -0.125, 0.375, 100.125, 1e6, -1e6, 123456.789,
         5e-6, -5e-6, 4.9999995e-6, 2.5e-6, 1e-7, -1e-7, 0.0, -0.0, 1.0, 99.995, 999.995, 0.499995, 9.999995]


def old_mot(frame_index, detections) -> str:
    """The f-string formatting that MOT files were written with before."""
    return "".join(f"{frame_index + 1},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj * cls:.5f},-1,-1,-1\n"
                   for x1, y1, x2, y2, obj, cls, _ in detections)


def random_rows(rng, dtype) -> np.ndarray:
    rows = rng.integers(0, 40)
    scale = 10.0 ** rng.integers(-6, 7, size=(rows, 7))
    values = (rng.standard_normal((rows, 7)) * scale).astype(dtype)
    if values.size:
        spots = rng.integers(0, values.size, size=min(values.size, 12))
        values.flat[spots] = np.asarray(rng.choice(EDGES, size=len(spots)), dtype=dtype)
    return values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_text_is_the_per_value_text(dtype):
    rng = np.random.default_rng(7)
    for frame_index in range(300):
        rows = random_rows(rng, dtype)
        assert mot_text(frame_index, rows).decode() == old_mot(frame_index, rows)
        line = jsonl_text("cam-1", frame_index, "a \"b\".png", rows).decode()
        rounded = [[round(float(v), 5) for v in row] for row in rows]
        assert line.endswith("\n") and line.count("\n") == 1
        assert json.loads(line) == {"camera": "cam-1", "frame": frame_index, "name": "a \"b\".png",
                                    "detections": rounded}


def test_detector_like_rows_every_value_and_its_text():
    """Boxes in pixels, scores in [0, 1]: the bulk of real output, every value checked against its own f-string."""
    rng = np.random.default_rng(3)
    corners = rng.uniform(-50, 2000, size=(5000, 2)).astype(np.float32)
    sizes = rng.uniform(0, 400, size=(5000, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, size=(5000, 2)).astype(np.float32)
    rows = np.concatenate([corners, corners + sizes, scores, np.zeros((5000, 1), np.float32)], axis=1)
    assert mot_text(41, rows) == mot_text_per_value(41, rows) == old_mot(41, rows).encode()
    parsed = json.loads(jsonl_text("c", 41, "n", rows))
    assert parsed == json.loads(jsonl_text_per_value("c", 41, "n", rows))


def test_values_formatted_in_python_where_arrays_cannot_be_exact():
    rows = np.array([[1.0, 2.0, np.nan, 4.0, 0.5, 0.5, 0.0], [1e300, 0.0, 1.0, 1.0, np.inf, 1.0, 0.0]])
    assert mot_text(0, rows).decode() == old_mot(0, rows)
    assert jsonl_text("c", 0, "n", rows) == jsonl_text_per_value("c", 0, "n", rows)


def test_empty_frames():
    empty = np.zeros((0, 7), np.float32)
    assert mot_text(3, empty) == b""
    assert json.loads(jsonl_text("c", 3, "n", empty)) == {"camera": "c", "frame": 3, "name": "n", "detections": []}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_steps_frames_formatted_together_are_each_frames_own_text(dtype):
    """A step's frames (any row counts, empty ones too) formatted in one pass give each frame's text alone."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        frames = [(int(rng.integers(0, 10**7)), random_rows(rng, dtype)) for _ in range(int(rng.integers(1, 17)))]
        assert mot_texts(frames) == [mot_text_per_value(index, rows) for index, rows in frames]
        named = [(f"cam{i}", index, f"{index}.jpg", rows) for i, (index, rows) in enumerate(frames)]
        expected = [jsonl_text_per_value(*frame) for frame in named]
        assert [json.loads(line) for line in jsonl_texts(named)] == [json.loads(line) for line in expected]
