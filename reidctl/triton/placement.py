"""GPU placement of the Triton models: the GPUs ``detection.triton.gpus`` names, checked against those visible here,
and the GPU each python-model instance runs on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from reidctl.config import DetectionConfig
from reidctl.errors import ReidctlError

GPUS_KEY = "detection.triton.gpus"


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def resolve_gpus(value: list[int] | str | None, visible: int) -> list[int] | None:
    """``detection.triton.gpus`` as the GPU ids the instance groups name, checked against the ``visible`` GPUs here.

    None keeps Triton's default (``count`` instances on each GPU the server sees); "all" is every visible GPU;
    ids come as a list or as text such as "0,1" (the command line's --gpus).
    """
    if value is None:
        return None
    where = f"--gpus {gpus_text(value)} ({GPUS_KEY})"
    ids = None if value == "all" else _gpu_ids(value)
    if ids is not None and (not ids or len(set(ids)) != len(ids) or min(ids) < 0):
        raise ReidctlError(f"{where}: expected all or distinct GPU ids such as 0,1")
    if visible == 0:
        raise ReidctlError(
            f"{where}: no CUDA GPU is visible here; run setup-triton on the GPU host or leave --gpus out"
        )
    if ids is None:
        return list(range(visible))
    if max(ids) >= visible:
        raise ReidctlError(f"{where}: GPU {max(ids)} does not exist here ({visible} visible: 0..{visible - 1})")
    return ids


def gpus_text(value) -> str:
    """``detection.triton.gpus`` as the command line writes it: "0,1" or "all"."""
    return ",".join(str(i) for i in value) if isinstance(value, list) else str(value)


def _gpu_ids(value: list[int] | str) -> list[int]:
    """Ids from a list or from text such as "0,1"; text that is no such list gives none (refused by the caller)."""
    if isinstance(value, list):
        return value
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        return []


def placed_on_gpus(detection: DetectionConfig, visible: Callable[[], int]) -> DetectionConfig:
    """``detection`` with ``triton.gpus`` resolved; ``visible`` counts the GPUs here, asked only when GPUs are named."""
    if detection.triton.gpus is None:
        return detection
    gpus = resolve_gpus(detection.triton.gpus, visible())
    if detection.device == "cpu":
        raise ReidctlError(
            "--gpus places the models on GPUs, but detection.device is cpu: use --device auto or leave --gpus out"
        )
    return replace(detection, triton=replace(detection.triton, gpus=gpus))


def gpu_placement(triton) -> str:
    """Where the instance groups put the models when ``triton.gpus`` (resolved) names GPUs, in words."""
    plural = "s" if triton.instances > 1 else ""
    return f"{triton.instances} instance{plural} on each of GPUs {gpus_text(triton.gpus)}"


def instance_device(configured: str, instance_kind: str, device_id: str) -> str:
    """The device a python-model instance runs on: the GPU Triton placed it on (a KIND_GPU instance gets its id
    in ``model_instance_device_id``), so each instance of a multi-GPU group uses its own GPU; else the config's."""
    if instance_kind == "GPU" and configured != "cpu":
        return f"cuda:{int(device_id)}"
    return configured
