"""Device selection shared by the in-process backends, the tensor types every backend names, and the pinned host
buffers that carry frames to a GPU."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from reidctl.errors import ReidctlError

# torch's type for each tensor type a model's inputs and outputs may have, by the name Triton gives it (TensorRT's
# names are the same but for FLOAT and HALF: reidctl.export.tensorrt translates those).
TORCH_DTYPES = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` made current for the block (on a GPU): Triton-language kernels and CUDA-graph capture run on the
    current device, not on their tensors', and a thread serving the second GPU starts with the first one current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class PinnedStaging:
    """Pinned host buffers that carry batches of uint8 frames to a GPU in one asynchronous copy each (a pageable copy
    would stage through a driver buffer). Batches take the buffers in turn: a buffer is refilled once its last copy
    has read it, and replaced by a larger one for a larger batch.

    Make it, and call it, with ``device`` current: pinning memory starts a CUDA context on whichever GPU is current.
    """

    def __init__(self, frame_shape: tuple[int, ...], device: torch.device, frames: int = 1, buffers: int = 1):
        self.frame_shape = tuple(frame_shape)
        self.device = device
        self.buffers = [self._allocate(frames) for _ in range(buffers)]  # pinned (frames, *frame_shape) uint8
        self._copied: list[torch.cuda.Event | None] = [None] * buffers
        self._turn = 0
        self._lock = threading.Lock()

    def _allocate(self, frames: int) -> torch.Tensor:
        return torch.empty((frames, *self.frame_shape), dtype=torch.uint8, pin_memory=True)

    def to_device(self, frames: int, fill: Callable[[torch.Tensor], object]) -> tuple[torch.Tensor, torch.cuda.Event]:
        """``fill`` writes the batch into the pinned (frames, *frame_shape) tensor it is given; that then goes to the
        device on the current stream. The batch on the device, and the event that marks its copy done."""
        with self._lock:
            turn, self._turn = self._turn, (self._turn + 1) % len(self.buffers)
            if self._copied[turn] is not None:
                self._copied[turn].synchronize()  # the last copy from this buffer has read it
            if len(self.buffers[turn]) < frames:
                # Doubling: a warm-up's growing batch sizes allocate a few times, not once each.
                self.buffers[turn] = self._allocate(max(frames, 2 * len(self.buffers[turn])))
            staged = self.buffers[turn][:frames]
            fill(staged)
            batch = staged.to(self.device, non_blocking=True)
            copied = self._copied[turn] = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(self.device))
        return batch, copied


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


def resolve_devices(text: str) -> list[torch.device]:
    """A device or a comma-separated list: 'cuda:0,1' (or 'cuda:0,cuda:1'), 'all' (every visible GPU).

    A list runs one runner per device. GPUs may appear once each; a list of CPUs ('cpu,cpu') is allowed so that
    spreading batches over several runners can be exercised without a GPU.
    """
    text = text.strip()
    if text == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ReidctlError("device 'all' was requested but no CUDA GPU is available here")
        return [torch.device("cuda", index) for index in range(count)]
    names = [name.strip() for name in text.split(",")]
    if len(names) == 1:
        return [resolve_device(names[0])]
    if "" in names or "auto" in names or "all" in names:
        raise ReidctlError(f"bad device list '{text}' (use e.g. cuda:0,1, cuda:0,cuda:1, all or cpu,cpu)")
    devices = []
    for name in names:
        if name.isdigit() and devices and devices[-1].type == "cuda":
            name = f"cuda:{name}"  # 'cuda:0,1': a bare index continues the GPU list
        devices.append(resolve_device(name))
    if len({device.type for device in devices}) > 1:
        raise ReidctlError(f"device list '{text}' mixes the CPU and GPUs: use only one kind")
    gpus = [device for device in devices if device.type == "cuda"]
    if len(set(gpus)) < len(gpus):
        raise ReidctlError(f"device list '{text}' names a GPU twice")
    return devices


ONNXRUNTIME_CUDA_PROVIDER = "CUDAExecutionProvider"


def onnxruntime_has_cuda() -> bool:
    """Whether the installed ONNX Runtime can run on the GPU (onnxruntime-gpu)."""
    import onnxruntime  # only where ONNX Runtime is used: it takes a while to import

    return ONNXRUNTIME_CUDA_PROVIDER in onnxruntime.get_available_providers()


def gpu_description(device: torch.device) -> dict:
    """Name and compute capability, recorded beside measurements and engines."""
    if device.type != "cuda":
        return {"name": "cpu", "compute_capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
