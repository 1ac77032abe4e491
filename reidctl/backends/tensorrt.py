"""TensorRT backend: a serialized engine run through named I/O tensors on its own CUDA stream.

Device buffers are torch tensors allocated once for the largest batch of the engine's profile and bound once;
a smaller batch uses their leading rows. With detection.tensorrt.cuda_graph each batch size is captured once
as a CUDA graph and replayed. Memory and streams come from torch, so no CUDA Python bindings are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reidctl.engine.detector import Backend, Runner, register
from reidctl.engine.device import resolve_device
from reidctl.errors import BackendUnavailable, ReidctlError, first_line, print_warning
from reidctl.export.onnx import OnnxMetadata
from reidctl.backends.artifact import artifact_decoded, check_input_size, infer_in_batches
from reidctl.export.tensorrt import (
    REBUILD_HINT,
    check_engine_compatibility,
    collecting_logger,
    current_platform,
    import_tensorrt,
    read_sidecar,
    sidecar_path,
    tensorrt_unavailable_reason,
    torch_dtype,
)


class TensorRTRunner(Runner):
    name = "tensorrt"
    input_format = "tensor"

    def __init__(self, engine_path: Path, device: torch.device, decoded: bool, cuda_graph: bool = True,
                 precision: str | None = None, warn: Callable[[str], None] = print):
        trt = import_tensorrt()
        self.engine_path = Path(engine_path)
        self.device = device
        self.decoded = decoded
        self.warn = warn
        self.tensorrt_version = trt.__version__
        self.logger = collecting_logger(trt)
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(self.logger)  # kept: the runtime must outlive its engines
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                reason = self.logger.last_error()
                raise ReidctlError(f"TensorRT cannot load {self.engine_path} ({reason}): {REBUILD_HINT}")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if n not in inputs]
            if len(inputs) != 1 or len(outputs) != 1:
                raise ReidctlError(f"{self.engine_path} is not a YOLOX detector engine: "
                                   f"inputs {inputs}, outputs {outputs}")
            self.input_name, self.output_name = inputs[0], outputs[0]
            shape = tuple(self.engine.get_tensor_shape(self.input_name))
            if shape[0] == -1:
                profile_min, _, profile_max = self.engine.get_tensor_profile_shape(self.input_name, 0)
                self.min_batch, self.max_batch = int(profile_min[0]), int(profile_max[0])
            else:
                self.min_batch = self.max_batch = int(shape[0])
            self.input_size = (int(shape[2]), int(shape[3]))
            self.input_dtype = torch_dtype(self.engine.get_tensor_dtype(self.input_name))
            # An fp16 engine built from an fp32 graph (TensorRT 10) still takes fp32 input: the sidecar knows.
            self.precision = precision or ("fp16" if self.input_dtype == torch.float16 else "fp32")
            self.context = self.engine.create_execution_context()
            full_shape = (self.max_batch, *shape[1:])
            self.context.set_input_shape(self.input_name, full_shape)
            self._shape_batch = self.max_batch
            output_shape = tuple(self.context.get_tensor_shape(self.output_name))
            output_dtype = torch_dtype(self.engine.get_tensor_dtype(self.output_name))
            self.input_buffer = torch.empty(full_shape, dtype=self.input_dtype, device=device)
            self.output_buffer = torch.empty(output_shape, dtype=output_dtype, device=device)
            self.context.set_tensor_address(self.input_name, self.input_buffer.data_ptr())
            self.context.set_tensor_address(self.output_name, self.output_buffer.data_ptr())
            self.stream = torch.cuda.Stream(device)
        self.use_cuda_graph = cuda_graph
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # TensorRT's activation memory is its own allocation, outside torch's counters.
        memory = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        self._engine_memory = int(memory if memory is not None else self.engine.device_memory_size)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": str(self.device),
            "engine": str(self.engine_path),
            "precision": self.precision,
            "tensorrt": self.tensorrt_version,
            "batch": f"{self.min_batch}-{self.max_batch}",
            "cuda_graph": self.use_cuda_graph,
        }

    def peak_memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) + self._engine_memory

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ReidctlError(f"TensorRT inference failed: {self.logger.last_error()}")

    def _graph_for(self, rows: int) -> torch.cuda.CUDAGraph | None:
        """The CUDA graph for ``rows``, captured on first use; None if capture is impossible (then run plainly)."""
        if rows in self._graphs:
            return self._graphs[rows]
        # One plain run first: TensorRT does its shape-dependent setup on the first enqueue, outside any capture.
        self._enqueue()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue()
        except RuntimeError as exc:
            self.use_cuda_graph = False
            self.warn(f"warning: CUDA graph capture of the TensorRT engine failed ({first_line(exc)}); "
                      "running without CUDA graphs")
            return None
        self._graphs[rows] = graph
        return graph

    def _execute(self, chunk: torch.Tensor) -> torch.Tensor:
        rows = len(chunk)
        caller_stream = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller_stream)  # the chunk was produced on the caller's stream
        with torch.cuda.stream(self.stream):
            self.input_buffer[:rows].copy_(chunk, non_blocking=True)
            if rows != self._shape_batch:
                self.context.set_input_shape(self.input_name, (rows, *self.input_buffer.shape[1:]))
                self._shape_batch = rows
            graph = self._graph_for(rows) if self.use_cuda_graph else None
            if graph is not None:
                graph.replay()
            else:
                self._enqueue()
        caller_stream.wait_stream(self.stream)
        return self.output_buffer[:rows].clone()  # on the caller's stream; the buffer is reused by the next call

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return infer_in_batches(batch, self._execute, self.min_batch, self.max_batch)

    def close(self) -> None:
        self._graphs.clear()
        for name in ("context", "engine", "runtime", "input_buffer", "output_buffer"):
            if hasattr(self, name):
                delattr(self, name)


def make_runner(config, warn=print_warning) -> TensorRTRunner:
    det = config.detection
    engine_path = Path(det.tensorrt.engine_path)
    if not engine_path.is_file():
        raise BackendUnavailable(f"TensorRT engine not found: {engine_path} (build it with `reidctl build-engine`)")
    device = resolve_device(det.device)
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT runs only on a CUDA GPU, but detection.device is '{det.device}'")
    trt = import_tensorrt()
    sidecar = read_sidecar(engine_path)
    if sidecar is None:
        warn(f"warning: {sidecar_path(engine_path)} is missing: cannot check that the engine was built for this GPU "
             "and TensorRT version")
    else:
        for warning in check_engine_compatibility(sidecar, current_platform(trt.__version__, device), engine_path):
            warn(warning)
    metadata = None
    if sidecar and sidecar.get("metadata"):
        metadata = OnnxMetadata.from_dict(sidecar["metadata"], sidecar_path(engine_path))
    decoded = artifact_decoded(metadata, det, engine_path, warn)
    runner = TensorRTRunner(engine_path, device, decoded, det.tensorrt.cuda_graph,
                            sidecar.get("precision") if sidecar else None, warn)
    try:
        check_input_size(runner.input_size, det, engine_path)
    except ReidctlError:
        runner.close()
        raise
    return runner


register(
    Backend(
        "tensorrt",
        "TensorRT engine (detection.tensorrt.engine_path), CUDA graphs",
        availability=tensorrt_unavailable_reason,
        make_runner=make_runner,
    )
)
