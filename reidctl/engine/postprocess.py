"""ByteTrack's postprocessing, once, for every backend: score, threshold, class-aware NMS, rescale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision

DETECTION_COLUMNS = ("x1", "y1", "x2", "y2", "obj_conf", "class_conf", "class_id")


def postprocess(
    predictions: torch.Tensor, ratios: Sequence[float], conf_threshold: float, nms_threshold: float
) -> list[np.ndarray]:
    """Decoded predictions (B, anchors, 5 + classes: cx, cy, w, h, obj, cls...) -> per frame float32 (N, 7).

    Rows are x1, y1, x2, y2 in original-frame pixels, obj_conf, class_conf, class_id, sorted by score.
    """
    return rescale(select_detections(predictions, conf_threshold, nms_threshold), ratios)


def select_detections(predictions: torch.Tensor, conf_threshold: float, nms_threshold: float) -> list[np.ndarray]:
    """Score, threshold and NMS: per frame float32 (N, 7) rows with boxes in input-canvas pixels.

    One NMS call serves the whole batch: boxes of different frames or classes never suppress each other.
    A server runs this step and returns its rows; the client finishes with ``rescale``.
    """
    predictions = predictions.float()
    batch, _, width = predictions.shape
    num_classes = width - 5
    class_conf, class_id = predictions[..., 5:].max(dim=-1)
    scores = predictions[..., 4] * class_conf
    frame_idx, anchor_idx = torch.nonzero(scores >= conf_threshold, as_tuple=True)
    selected = predictions[frame_idx, anchor_idx]
    cxcy, wh = selected[:, :2], selected[:, 2:4]
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=1)
    kept_class = class_id[frame_idx, anchor_idx]
    kept_scores = scores[frame_idx, anchor_idx]
    keep = torchvision.ops.batched_nms(boxes, kept_scores, frame_idx * num_classes + kept_class, nms_threshold)
    rows = torch.cat(
        [boxes[keep], selected[keep, 4:5], class_conf[frame_idx[keep], anchor_idx[keep]][:, None], kept_class[keep, None].float()],
        dim=1,
    )
    rows_cpu = rows.cpu().numpy().astype(np.float32, copy=False)
    frames_cpu = frame_idx[keep].cpu().numpy()
    return [rows_cpu[frames_cpu == b] for b in range(batch)]


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
