"""A frame's geometry on the host, NumPy and OpenCV only: the letterbox into the network input and the rescale of
detection rows back to frame pixels. Client processes that only send frames to a server use these without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PAD_VALUE = 114


def letterbox_ratio(frame_hw: tuple[int, int], input_size: tuple[int, int]) -> float:
    return min(input_size[0] / frame_hw[0], input_size[1] / frame_hw[1])


def letterbox_into(frame: np.ndarray, canvas: np.ndarray) -> float:
    """Letterbox one uint8 HxWx3 BGR frame on the host into ``canvas`` (H, W, 3), whose shape is the network input
    size; returns the frame's scale ratio. cv2.resize releases the GIL, so camera reader threads run this in parallel;
    it resizes straight into the canvas (a view of it, rows apart), not into a new array copied after.
    """
    ratio = letterbox_ratio(frame.shape[:2], canvas.shape[:2])
    new_h, new_w = int(frame.shape[0] * ratio), int(frame.shape[1] * ratio)
    if (new_h, new_w) == frame.shape[:2]:
        canvas[:new_h, :new_w] = frame
    else:
        cv2.resize(frame, (new_w, new_h), dst=canvas[:new_h, :new_w], interpolation=cv2.INTER_LINEAR)
    canvas[new_h:] = PAD_VALUE
    canvas[:new_h, new_w:] = PAD_VALUE
    return ratio


def letterbox_frame(frame: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """One frame's host canvas (``letterbox_into`` a new array) and its ratio."""
    canvas = np.empty((*input_size, 3), dtype=np.uint8)
    return canvas, letterbox_into(frame, canvas)


def rescale(detections: Sequence[np.ndarray], ratios: Sequence[float], conf_threshold: float = 0.0) -> list[np.ndarray]:
    """Canvas-pixel rows -> original-frame pixels (new arrays), dropping rows scored below ``conf_threshold``.

    Dropping after NMS equals thresholding before it: a box can only be suppressed by a higher-scoring one,
    which passes any threshold the suppressed box passes. So a client may be stricter than the server's threshold.
    """
    frames = []
    for rows, ratio in zip(detections, ratios):
        rows = rows[rows[:, 4] * rows[:, 5] >= conf_threshold] if conf_threshold > 0 else rows.copy()
        rows[:, :4] /= np.float32(ratio)
        frames.append(rows)
    return frames
