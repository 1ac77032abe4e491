"""ByteTrack's postprocessing, once, for every backend: score, threshold, class-aware NMS, rescale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DETECTION_COLUMNS = ("x1", "y1", "x2", "y2", "obj_conf", "class_conf", "class_id")


@dataclass(frozen=True)
class Selection:
    """One batch's detections and the load NMS faced, per frame."""

    rows: list[np.ndarray]  # float32 (N, 7) rows in input-canvas pixels, by descending score
    candidates: list[int]  # anchors scored at or above conf_threshold, before NMS

    @property
    def kept(self) -> list[int]:
        return [len(rows) for rows in self.rows]


NMS_METHODS = ("kernels", "torchvision")


def select_detections(
    predictions: torch.Tensor, conf_threshold: float, nms_threshold: float, method: str | None = None
) -> Selection:
    """Decoded predictions (B, anchors, 5 + classes: cx, cy, w, h, obj, cls...) -> per frame float32 (N, 7).

    Rows are x1, y1, x2, y2 in input-canvas pixels, obj_conf, class_conf, class_id, sorted by score. Boxes of
    different frames or classes never suppress each other. On CUDA the whole batch goes through one greedy NMS in
    Triton-language kernels (reidctl.core.nms_kernels) and the host waits once, for the kept rows; the CPU keeps
    torchvision.
    A server runs this step and returns its rows; the client finishes with ``rescale``.
    ``method`` forces one NMS ("kernels": those, CUDA only; "torchvision"), e.g. to compare them on a GPU.
    """
    method = method or ("kernels" if predictions.is_cuda else "torchvision")
    if method not in NMS_METHODS:
        raise ValueError(f"unknown NMS method '{method}' (known: {', '.join(NMS_METHODS)})")
    predictions = predictions.float()
    batch, _, width = predictions.shape
    class_conf, class_id = predictions[..., 5:].max(dim=-1)
    scores = predictions[..., 4] * class_conf
    cxcy, wh = predictions[..., :2], predictions[..., 2:4]
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=-1)
    # Candidate counts stay on the device until the rows come back: waiting for them first would keep the host from
    # queueing the NMS work while the model still runs, and every batch would wait for it (docs/PERFORMANCE.md).
    if method == "kernels":
        from reidctl.core.nms_kernels import batched_greedy_nms  # imports the Triton language: only for a GPU

        nms = batched_greedy_nms(boxes, scores, class_id, conf_threshold, nms_threshold)
        candidates = nms.candidates
        frame_idx, position = nms.keep.nonzero(as_tuple=True)
        anchor_idx = nms.order[frame_idx, position]
    else:
        import torchvision  # only here: the GPU's kernels and a server's NMS never need it, and it takes seconds

        candidate = scores >= conf_threshold
        candidates = candidate.sum(dim=1)
        frame_idx, anchor_idx = torch.nonzero(candidate, as_tuple=True)
        groups = frame_idx * (width - 5) + class_id[frame_idx, anchor_idx]
        keep = torchvision.ops.batched_nms(
            boxes[frame_idx, anchor_idx], scores[frame_idx, anchor_idx], groups, nms_threshold
        )
        keep = keep[torch.sort(frame_idx[keep], stable=True).indices]  # by frame, each by descending score
        frame_idx, anchor_idx = frame_idx[keep], anchor_idx[keep]
    rows = torch.cat(
        [
            boxes[frame_idx, anchor_idx],
            predictions[frame_idx, anchor_idx, 4:5],
            class_conf[frame_idx, anchor_idx, None],
            class_id[frame_idx, anchor_idx, None].float(),
            frame_idx[:, None].float(),  # exact below 2**24 frames; travels with the rows in one copy
        ],
        dim=1,
    ).cpu().numpy()
    per_frame = np.bincount(rows[:, -1].astype(np.int64), minlength=batch)
    frames = np.split(rows[:, :-1], np.cumsum(per_frame)[:-1])
    return Selection(frames, candidates.tolist())
