"""Triton backend: the Detector's runner over reidctl.triton.requests, which sends the batches to a Triton
Inference Server over gRPC (one server or several; see there).

The client works on the host only (OpenCV letterbox, rescale): a second process with GPU work would time-slice
the GPU with the server's, and both would run slower (docs/PERFORMANCE.md, figures behind choices). The python model
returns finished detections (its NMS runs on the server), so a response is a few rows; a TensorRT model returns
every anchor, which the client's shared postprocessing turns into detections.
"""

from __future__ import annotations

import numpy as np
import torch

from reidctl.core.detector import Runner
from reidctl.core.registry import Artifact, Backend, register
from reidctl.core.device import TORCH_DTYPES
from reidctl.errors import print_warning
from reidctl.triton.client import PeakWatch, local_servers_gpu_memory
from reidctl.triton.requests import TritonRequests, availability, frame_sender


class TritonRunner(TritonRequests, Runner):
    batches_remotely = True  # thread-safe: concurrent callers reach the server's dynamic batcher
    device = torch.device("cpu")

    def __init__(self, triton, warn=print_warning):
        super().__init__(triton, warn)
        self.input_dtype = TORCH_DTYPES[self.input_datatype]
        urls = [server.url for server in self.servers]
        self._server_memory = PeakWatch(lambda: local_servers_gpu_memory(urls))
        self._server_memory.start()

    def infer(self, batch: torch.Tensor) -> torch.Tensor | list[np.ndarray]:
        predictions = self.infer_array(np.ascontiguousarray(batch.detach().numpy()))
        return predictions if self.returns_detections else torch.from_numpy(predictions)

    def peak_memory_bytes(self) -> int | None:
        """The most GPU memory the bundled servers started here were seen to hold while this runner was open."""
        return self._server_memory.sample()

    def close(self) -> None:
        self._server_memory.stop()
        super().close()


def make_runner(config, warn=print_warning) -> TritonRunner:
    return TritonRunner(config.detection.triton, warn)


register(
    Backend(
        "triton",
        "Triton Inference Server over gRPC (dynamic batching)",
        availability=availability,
        make_runner=make_runner,
        simplicity=3,
        artifact=Artifact.SERVER_MODEL,
        config_section="triton",
        packages=("tritonclient",),
        frame_sender=frame_sender,
    )
)
