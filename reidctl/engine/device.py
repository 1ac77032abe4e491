"""Device selection shared by the in-process backends."""

from __future__ import annotations

import torch

from reidctl.errors import ReidctlError


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first GPU if there is one, else the CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ReidctlError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ReidctlError(f"device '{name}' was requested but no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ReidctlError(f"device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) visible")
        if device.index is None:
            device = torch.device("cuda:0")
    elif device.type != "cpu":
        raise ReidctlError(f"unsupported device '{name}' (use auto, cpu, cuda or cuda:N)")
    return device


def gpu_description(device: torch.device) -> dict:
    """Name and compute capability, recorded beside measurements and engines."""
    if device.type != "cuda":
        return {"name": "cpu", "compute_capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
