"""Triton backend: the Detector's runner sends batches to a Triton Inference Server over gRPC.

Several streams reach the server's dynamic batcher at once when they call one Detector from several threads
(each call is its own request; the gRPC client is thread safe) or use one Detector each. Frames travel as
uint8 canvases to a model that normalises on the server (the python model), or as normalised tensors to one
that takes float input (a TensorRT engine). On the server's host, inputs can go through system shared memory.

The client works on the host only (OpenCV letterbox, rescale): a second process with GPU work would time-slice
the GPU with the server's (measured on the H100: slower). The python model returns finished detections (its NMS
runs on the server), so a response is a few rows; a TensorRT model returns every anchor, which the client's
shared postprocessing turns into detections.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from concurrent.futures import Future

import numpy as np
import torch

from reidctl.engine.detector import Backend, Runner, register
from reidctl.errors import ReidctlError, first_line, print_warning
from reidctl.triton.client import batch_counts, local_server_gpu_memory, message_of, served_model
from reidctl.triton.repository import PYTHON_COUNT_OUTPUT, PYTHON_OUTPUT

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
TORCH_DTYPES = {"UINT8": torch.uint8, "FP32": torch.float32, "FP16": torch.float16}
# A request may take this many times the latency a caller expects (allow_latency) before it counts as hung: wide,
# because a closed loop on a busy CPU (client threads and server sharing cores) queues far longer than N x one
# request (seen here: 8 cameras of 25 ms frames waiting over 0.5 s).
LATENCY_MARGIN = 10.0
# The first request may carry the server's one-off costs (first run at this input size, CUDA graph capture).
FIRST_REQUEST_TIMEOUT = 300.0
_region_ids = itertools.count()


def availability() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.utils.shared_memory  # noqa: F401
    except Exception as exc:  # protobuf version clashes raise more than ImportError
        return f"tritonclient[grpc] cannot be imported ({type(exc).__name__}: {first_line(exc, 120)})"
    return None


class _SharedInput:
    """One thread's system shared memory region for input batches, grown on demand."""

    def __init__(self, client, shm):
        self.client, self.shm = client, shm
        self.handle = None
        self.name = ""
        self.size = 0

    def ensure(self, byte_size: int) -> None:
        if byte_size <= self.size:
            return
        self.release()
        self.name = f"reidctl_{os.getpid()}_{next(_region_ids)}"
        self.handle = self.shm.create_shared_memory_region(self.name, f"/{self.name}", byte_size)
        self.size = byte_size
        self.client.register_system_shared_memory(self.name, f"/{self.name}", byte_size)

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(Exception):  # the server may be gone; the local region goes regardless
            self.client.unregister_system_shared_memory(self.name)
        self.shm.destroy_shared_memory_region(self.handle)
        self.handle, self.size = None, 0


class TritonRunner(Runner):
    name = "triton"
    batches_remotely = True  # thread-safe: concurrent callers reach the server's dynamic batcher

    device = torch.device("cpu")

    def __init__(self, triton, warn=print_warning):
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm
        from tritonclient.utils import InferenceServerException

        self._grpc, self._shm, self._server_error = grpcclient, shm, InferenceServerException
        self.url = triton.url
        self.model_name = triton.model_name
        self.model_version = triton.model_version
        self.configured_timeout = self.timeout = triton.timeout
        self.max_in_flight = max(1, triton.max_in_flight)
        self._warn = warn
        self.client = grpcclient.InferenceServerClient(self.url, verbose=triton.verbose)
        try:
            model = served_model(
                self.client, self.url, self.model_name, self.model_version, self.timeout, InferenceServerException
            )
        except ReidctlError:
            self.client.close()
            raise
        self.input_name, self.input_datatype = model.input_name, model.input_datatype
        self.input_format = "canvas" if self.input_datatype == "UINT8" else "tensor"
        self.input_dtype = TORCH_DTYPES[self.input_datatype]
        self.decoded = True
        self.input_shape, self.max_batch_size = model.input_shape, model.max_batch_size
        self.returns_detections, self.output_names = model.returns_detections, model.output_names
        self.output_datatype, self.parameters = model.output_datatype, model.parameters
        self.server_version = model.server_version
        self.use_shared_memory = triton.shared_memory and self.url.rsplit(":", 1)[0] in LOCAL_HOSTS
        self._regions: list[_SharedInput] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        self._answered = False  # until a first request succeeds, requests get FIRST_REQUEST_TIMEOUT

    # -- set-up ---------------------------------------------------------------------------------------------
    def check_input_size(self, test_size: tuple[int, int]) -> None:
        """The model's fixed input size must be the Detector's letterbox size."""
        dims = self.input_shape[1:] if self.max_batch_size > 0 else self.input_shape
        height_width = dims[:2] if self.input_format == "canvas" else dims[1:3]
        if all(d > 0 for d in height_width) and tuple(height_width) != tuple(test_size):
            raise ReidctlError(
                f"model '{self.model_name}' takes {height_width[0]}x{height_width[1]} input but detection.test_size "
                f"is {test_size[0]}x{test_size[1]}"
            )

    def check_thresholds(self, conf_threshold: float, nms_threshold: float) -> None:
        """A model that applies NMS on the server must use the client's IoU threshold and a score threshold no
        stricter than the client's (the client drops rows below its own)."""
        if not self.returns_detections:
            return
        server_conf = float(self.parameters.get("conf_threshold", 0.0))
        server_nms = float(self.parameters.get("nms_threshold", nms_threshold))
        where = f"model '{self.model_name}' on Triton at {self.url}"
        if abs(server_nms - nms_threshold) > 1e-9:
            raise ReidctlError(
                f"{where} applies NMS at IoU {server_nms:g} but detection.nms_threshold is {nms_threshold:g}: "
                f"rewrite it with `reidctl setup-triton --nms {nms_threshold:g}` and restart the server"
            )
        if conf_threshold < server_conf - 1e-9:
            raise ReidctlError(
                f"{where} keeps scores >= {server_conf:g} but detection.conf_threshold is {conf_threshold:g}: "
                f"rewrite it with `reidctl setup-triton --conf {conf_threshold:g}` and restart the server"
            )

    def describe(self) -> dict:
        server_model = {key: self.parameters[key] for key in ("fp16", "compile", "device") if key in self.parameters}
        return {
            "backend": self.name,
            "device": str(self.device),
            "url": self.url,
            "model": self.model_name,
            "server": f"Triton {self.server_version}",
            "input": f"{self.input_name} {self.input_datatype}",
            "output": "detections (NMS on the server)"
            if self.returns_detections
            else f"predictions {self.output_datatype}",
            "server_model": server_model,
            "shared_memory": self.use_shared_memory,
        }

    # -- inference ------------------------------------------------------------------------------------------
    def _region(self) -> _SharedInput:
        region = getattr(self._local, "region", None)
        if region is None:
            region = self._local.region = _SharedInput(self.client, self._shm)
            with self._lock:
                self._regions.append(region)
        return region

    def _inputs_for(self, array: np.ndarray) -> list:
        """One InferInput per request in the batch's chunks; through this thread's shared memory if enabled."""
        chunk = self.max_batch_size if self.max_batch_size > 0 else len(array)
        parts = [array[i : i + chunk] for i in range(0, len(array), chunk)]
        inputs = [self._grpc.InferInput(self.input_name, list(part.shape), self.input_datatype) for part in parts]
        if self.use_shared_memory:
            try:
                region = self._region()
                region.ensure(array.nbytes)
                self._shm.set_shared_memory_region(region.handle, [array])
                offset = 0
                for item, part in zip(inputs, parts):
                    item.set_shared_memory(region.name, part.nbytes, offset)
                    offset += part.nbytes
                return inputs
            except (self._server_error, self._shm.SharedMemoryException) as exc:
                # e.g. a server in a container without the host's IPC namespace: send the bytes instead
                self.use_shared_memory = False
                self._warn(f"warning: Triton shared memory unavailable ({message_of(exc)}); sending inputs over gRPC")
        for item, part in zip(inputs, parts):
            item.set_data_from_numpy(part)
        return inputs

    def _fail(self, exc: Exception) -> ReidctlError:
        status = str(exc.status()) if hasattr(exc, "status") else ""
        if "DEADLINE_EXCEEDED" in status:
            basis = "detection.triton.timeout"
            if self.timeout > self.configured_timeout:
                basis = f"{basis} {self.configured_timeout:g} s, raised for the measured latency"
            return ReidctlError(
                f"Triton request to '{self.model_name}' at {self.url} timed out after {self.timeout:g} s ({basis})"
            )
        if "UNAVAILABLE" in status:
            return ReidctlError(
                f"Triton server at {self.url} stopped responding ({message_of(exc)}): "
                "check it with `reidctl setup-triton --status`"
            )
        return ReidctlError(f"Triton inference on '{self.model_name}' failed: {message_of(exc)}")

    def infer(self, batch: torch.Tensor) -> torch.Tensor | list[np.ndarray]:
        if self._closed:
            raise ReidctlError("the Triton runner is closed")
        array = np.ascontiguousarray(batch.detach().numpy())
        inputs = self._inputs_for(array)
        outputs = [self._grpc.InferRequestedOutput(name) for name in self.output_names]
        futures: list[Future] = []
        timeout = self.timeout if self._answered else max(self.timeout, FIRST_REQUEST_TIMEOUT)
        # Chunks of a large batch go out together, at most max_in_flight at a time, so the batcher sees them at once.
        window = threading.BoundedSemaphore(self.max_in_flight)
        for item in inputs:
            window.acquire()
            future: Future = Future()

            def done(result, error, future=future):
                window.release()
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            try:
                self.client.async_infer(
                    self.model_name, [item], done, self.model_version, outputs=outputs, client_timeout=timeout
                )
            except self._server_error as exc:
                window.release()
                future.set_exception(exc)
            futures.append(future)
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except self._server_error as exc:
                raise self._fail(exc) from None
        self._answered = True
        if self.returns_detections:  # zero-padded rows per frame and each frame's count
            return [
                rows[:count]
                for result in results
                for rows, (count,) in zip(result.as_numpy(PYTHON_OUTPUT), result.as_numpy(PYTHON_COUNT_OUTPUT))
            ]
        return torch.from_numpy(np.concatenate([result.as_numpy(self.output_names[0]) for result in results]))

    def batch_counts(self) -> dict[int, int] | None:
        """Executions per batch size from the server's statistics (what the dynamic batcher formed)."""
        try:
            statistics = self.client.get_inference_statistics(
                self.model_name, self.model_version, as_json=True, client_timeout=self.timeout
            )
        except self._server_error as exc:
            raise self._fail(exc) from None
        return batch_counts(statistics)

    def allow_latency(self, seconds: float) -> None:
        """Requests may take LATENCY_MARGIN x ``seconds`` where that is longer than detection.triton.timeout,
        which is meant to catch a hung server, not to fail a slow one (see bench's allow_measured_latency)."""
        self.timeout = max(self.configured_timeout, LATENCY_MARGIN * seconds)

    # -- resources ------------------------------------------------------------------------------------------
    def peak_memory_bytes(self) -> int | None:
        return local_server_gpu_memory(self.url)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for region in self._regions:
                region.release()
            self._regions.clear()
        self.client.close()


def make_runner(config, warn=print_warning) -> TritonRunner:
    det = config.detection
    runner = TritonRunner(det.triton, warn)
    try:
        runner.check_input_size(det.input_size)
        runner.check_thresholds(det.conf_threshold, det.nms_threshold)
    except ReidctlError:
        runner.close()
        raise
    return runner


register(
    Backend(
        "triton",
        "Triton Inference Server over gRPC (dynamic batching)",
        availability=availability,
        make_runner=make_runner,
    )
)
