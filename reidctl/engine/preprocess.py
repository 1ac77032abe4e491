"""ByteTrack's preprocessing, once, for every backend, on whichever device the backend runs.

Two stages so that a server can take the compact uint8 form:
  letterbox: resize keeping aspect ratio into ``test_size``, pad bottom/right with 114 -> uint8 (B, H, W, 3) BGR
  normalize: BGR->RGB, /255, (x - mean) / std -> float (B, 3, H, W)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD_VALUE = 114


def letterbox_ratio(frame_hw: tuple[int, int], test_size: tuple[int, int]) -> float:
    return min(test_size[0] / frame_hw[0], test_size[1] / frame_hw[1])


def letterbox(
    frames: Sequence[np.ndarray], test_size: tuple[int, int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[float]]:
    """uint8 HxWx3 BGR frames -> uint8 (B, H, W, 3) canvas on ``device`` and each frame's scale ratio.

    Bilinear with half-pixel centres and no antialiasing, rounded to uint8: what cv2.resize(INTER_LINEAR)
    does in ByteTrack, but computed on the backend's device.
    """
    device = torch.device(device)
    canvas = torch.full((len(frames), *test_size, 3), PAD_VALUE, dtype=torch.uint8, device=device)
    ratios = []
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        ratio = letterbox_ratio((h, w), test_size)
        new_h, new_w = int(h * ratio), int(w * ratio)
        source = torch.from_numpy(np.ascontiguousarray(frame)).to(device)
        if (new_h, new_w) != (h, w):
            chw = source.permute(2, 0, 1).unsqueeze(0).float()
            resized = F.interpolate(chw, size=(new_h, new_w), mode="bilinear", align_corners=False)
            source = resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
        canvas[i, :new_h, :new_w] = source
        ratios.append(ratio)
    return canvas, ratios


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached on the device: a host-to-device copy inside normalize() would break CUDA-graph capture.
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(canvas: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, H, W, 3) BGR -> normalised RGB (B, 3, H, W) in ``dtype``, on the canvas's device."""
    mean, std = _mean_std(canvas.device)
    rgb = canvas.flip(-1).permute(0, 3, 1, 2).float()
    return ((rgb / 255.0 - mean) / std).to(dtype)
