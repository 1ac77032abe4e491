"""ONNX Runtime backend: the exported ONNX file on ONNX Runtime (CUDA provider first where onnxruntime-gpu is
installed, else the CPU). A compiled, deployable path without TensorRT."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from reidctl.core.detector import Runner
from reidctl.core.registry import Artifact, Backend, register
from reidctl.core.device import ONNXRUNTIME_CUDA_PROVIDER, onnxruntime_has_cuda, resolve_device
from reidctl.errors import BackendUnavailable, ReidctlError, print_warning
from reidctl.export.onnx import OnnxInfo, create_session, default_onnx_path, read_onnx
from reidctl.backends.artifact import artifact_decoded, infer_in_batches


def session_providers(device_name: str) -> list:
    """CPU for 'cpu'; the CUDA provider first for 'auto' or 'cuda[:N]' where onnxruntime-gpu provides it."""
    device = resolve_device(device_name) if device_name != "auto" else None
    has_cuda = onnxruntime_has_cuda()
    if device is not None and device.type == "cuda" and not has_cuda:
        raise ReidctlError(f"device '{device_name}' needs ONNX Runtime's CUDA provider: pip install onnxruntime-gpu")
    if has_cuda and (device is None or device.type == "cuda"):
        device_id = device.index if device is not None else 0
        return [(ONNXRUNTIME_CUDA_PROVIDER, {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """Takes normalised NCHW batches in the graph's input type; ONNX Runtime copies to and from its device."""

    name = "onnxruntime"
    input_format = "tensor"

    def __init__(self, info: OnnxInfo, session: ort.InferenceSession, decoded: bool):
        self.info = info
        self.artifact_name = str(info.path)
        self.input_size = info.input_size
        self.session = session
        self.input_dtype = info.input_dtype
        self.decoded = decoded
        self.device = torch.device("cpu")

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": "cpu",
            "providers": self.session.get_providers(),
            "model": str(self.info.path),
            "precision": self.info.precision,
            "batch": "dynamic" if self.info.batch is None else self.info.batch,
        }

    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        feed = {self.info.input_name: np.ascontiguousarray(chunk.numpy())}
        return torch.from_numpy(self.session.run([self.info.output_name], feed)[0])

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return infer_in_batches(batch, self._run, self.info.batch or 1, self.info.batch)

    def close(self) -> None:
        self.session = None


def make_runner(config, warn=print_warning) -> OnnxRuntimeRunner:
    det = config.detection
    path = default_onnx_path(det)
    if not path.is_file():  # a missing export makes the backend unavailable, not broken
        raise BackendUnavailable(f"ONNX model not found: {path} (create it with `reidctl export-onnx`)")
    info = read_onnx(path)
    decoded = artifact_decoded(info.metadata, det, path, warn)
    return OnnxRuntimeRunner(info, create_session(path, session_providers(det.device)), decoded)


register(
    Backend(
        "onnxruntime",
        "ONNX Runtime on the exported ONNX (detection.onnx_path)",
        availability=lambda: None,
        make_runner=make_runner,
        simplicity=1,
        artifact=Artifact.ONNX,
        config_keys=("onnx_path",),
        config_section="tensorrt",  # its ONNX file is by default the engine path with .onnx
        cpu_only_here=lambda: not onnxruntime_has_cuda(),
        packages=("onnxruntime", "onnxruntime-gpu"),
    )
)
