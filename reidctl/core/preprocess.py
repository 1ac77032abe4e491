"""ByteTrack's preprocessing, once, for every backend, on whichever device the backend runs.

Two stages so that a server can take the compact uint8 form:
  letterbox: resize keeping aspect ratio into ``input_size``, pad bottom/right with 114 -> uint8 (B, H, W, 3) BGR
  normalize: BGR->RGB, /255, (x - mean) / std -> float (B, 3, H, W)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reidctl.core.frames import PAD_VALUE, letterbox_into, letterbox_ratio
from reidctl.core.frames import letterbox_frame as letterbox_frame  # where the camera readers import it from

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def letterbox(
    frames: Sequence[np.ndarray], input_size: tuple[int, int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[float]]:
    """uint8 HxWx3 BGR frames -> uint8 (B, H, W, 3) canvas on ``device`` and each frame's scale ratio.

    Bilinear with half-pixel centres and no antialiasing, rounded to uint8: ByteTrack's cv2.resize(INTER_LINEAR).
    On the host that very call runs, on a NumPy canvas: no torch operator, whose OpenMP threads would compete for
    cores with a server on the same host. On a GPU the same formula runs on the device.
    """
    device = torch.device(device)
    if device.type == "cpu":
        canvas = np.empty((len(frames), *input_size, 3), dtype=np.uint8)
        return torch.from_numpy(canvas), [letterbox_into(frame, canvas[i]) for i, frame in enumerate(frames)]
    ratios = [letterbox_ratio(frame.shape[:2], input_size) for frame in frames]
    sizes = [(int(frame.shape[0] * ratio), int(frame.shape[1] * ratio)) for frame, ratio in zip(frames, ratios)]
    canvas = torch.full((len(frames), *input_size, 3), PAD_VALUE, dtype=torch.uint8, device=device)
    for i, (frame, (new_h, new_w)) in enumerate(zip(frames, sizes)):
        source = torch.from_numpy(np.ascontiguousarray(frame)).to(device)
        canvas[i, :new_h, :new_w] = (
            source if (new_h, new_w) == frame.shape[:2] else bilinear_resize(source, (new_h, new_w))
        )
    return canvas, ratios


def bilinear_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 tensor -> ``size`` with cv2.INTER_LINEAR's formula, on the tensor's device (the GPU path)."""
    chw = image.permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(chw, size=size, mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


@functools.lru_cache(maxsize=8)
def mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (1, 3, 1, 1), cached on the device: a host-to-device copy inside normalize()
    would break CUDA-graph capture."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(
    canvas: torch.Tensor, dtype: torch.dtype = torch.float32, constants: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """uint8 (B, H, W, 3) BGR -> normalised RGB (B, 3, H, W) in ``dtype``, on the canvas's device.

    ``constants``: ``mean_std()`` held by the caller, e.g. as buffers of a module that torch.compile traces
    (it traces through the cache and would copy the constants from the host in every call).
    """
    mean, std = constants if constants is not None else mean_std(canvas.device)
    rgb = canvas.flip(-1).permute(0, 3, 1, 2).float()
    return ((rgb / 255.0 - mean) / std).to(dtype)


def sample_input(batch: int, input_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A normalised fp32 batch made from random uint8 pixels: realistic value ranges, reproducible."""
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.randint(0, 256, (batch, *input_size, 3), dtype=torch.uint8, generator=generator)
    return normalize(canvas)
