"""TensorRT backend: a serialized engine run through named I/O tensors on its own CUDA stream.

Device buffers are torch tensors allocated once for the largest batch of the engine's profile; a smaller batch uses
their leading rows. With detection.tensorrt.cuda_graph each batch size gets its own execution context, set to that
shape once and captured once as a CUDA graph (a graph replays its context's kernels, so a captured context is never
re-shaped); the contexts share one block of activation memory, as they run one after another on one stream. Without
CUDA graphs one context is re-shaped as batch sizes change. Memory and streams come from torch, so no CUDA Python
bindings are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reidctl.core.detector import Runner
from reidctl.core.registry import Artifact, Backend, register
from reidctl.core.device import resolve_device
from reidctl.errors import BackendUnavailable, ReidctlError, first_line, print_warning
from reidctl.export.onnx import OnnxMetadata
from reidctl.backends.artifact import artifact_decoded, infer_in_batches
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

SHARED_CONTEXT = 0  # the key of the one context that serves every batch size without CUDA graphs


class ExecutionPlan:
    """Which execution context runs a batch and when to capture it: pure bookkeeping, tested without TensorRT.

    With CUDA graphs, context ``rows`` serves batches of ``rows`` frames only and is captured on its first run.
    When a capture fails, graphs are off for good and one shared context serves every batch size.
    """

    def __init__(self, cuda_graphs: bool):
        self.cuda_graphs = cuda_graphs
        self.captured: set[int] = set()

    def context_key(self, rows: int) -> int:
        return rows if self.cuda_graphs else SHARED_CONTEXT

    def needs_capture(self, rows: int) -> bool:
        return self.cuda_graphs and rows not in self.captured

    def mark_captured(self, rows: int) -> None:
        self.captured.add(rows)

    def disable_graphs(self, reason: str) -> str | None:
        """Turn CUDA graphs off; the warning to show, only the first time."""
        if not self.cuda_graphs:
            return None
        self.cuda_graphs = False
        self.captured.clear()
        return f"warning: CUDA graph capture of the TensorRT engine failed ({reason}); running without CUDA graphs"


def capture_failure(enqueued: bool, capture_error: str | None, tensorrt_error: str) -> str | None:
    """Why a captured graph is unusable, or None when it is good. TensorRT returns False from ``execute_async_v3``
    while capturing an engine with operations a CUDA graph cannot hold; the capture itself may also fail."""
    if capture_error:
        return capture_error
    if not enqueued:
        return tensorrt_error
    return None


class TensorRTRunner(Runner):
    name = "tensorrt"
    input_format = "tensor"

    def __init__(self, engine_path: Path, device: torch.device, decoded: bool, cuda_graph: bool = True,
                 precision: str | None = None, warn: Callable[[str], None] = print):
        trt = import_tensorrt()
        self.engine_path = Path(engine_path)
        self.artifact_name = str(self.engine_path)
        self.device = device
        self.decoded = decoded
        self.warn = warn
        self.tensorrt_version = trt.__version__
        self.logger = collecting_logger(trt, warn)
        self.plan = ExecutionPlan(cuda_graph)
        self._contexts: dict[int, object] = {}
        self._context_rows: dict[int, int] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
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
            # TensorRT's activation memory is its own allocation, outside torch's counters unless shared from torch.
            memory = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
            self._engine_memory = int(memory if memory is not None else self.engine.device_memory_size)
            self._user_managed = self._user_managed_strategy(trt)
            self._activations = (torch.empty(self._engine_memory, dtype=torch.uint8, device=device)
                                 if self._user_managed is not None else None)
            full_shape = (self.max_batch, *shape[1:])
            self.input_buffer = torch.empty(full_shape, dtype=self.input_dtype, device=device)
            first = self._new_context()  # sized for the largest batch: its output shape sizes the output buffer
            self._set_rows(first, self.max_batch)
            output_shape = tuple(first.get_tensor_shape(self.output_name))
            output_dtype = torch_dtype(self.engine.get_tensor_dtype(self.output_name))
            self.output_buffer = torch.empty(output_shape, dtype=output_dtype, device=device)
            self._bind(first)
            key = self.plan.context_key(self.max_batch)
            self._contexts[key], self._context_rows[key] = first, self.max_batch
            self.stream = torch.cuda.Stream(device)

    def _user_managed_strategy(self, trt):
        """TensorRT's USER_MANAGED allocation strategy when this version has it (10.1+: contexts then share one
        activation block), else None (each context allocates its own)."""
        strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if strategies is None or not hasattr(trt.IExecutionContext, "set_device_memory") or self._engine_memory == 0:
            return None
        return strategies.USER_MANAGED

    def _new_context(self):
        if self._user_managed is not None:
            context = self.engine.create_execution_context(self._user_managed)
            if context is not None:
                context.set_device_memory(self._activations.data_ptr(), self._activations.numel())
        else:
            context = self.engine.create_execution_context()
        if context is None:
            raise ReidctlError(f"TensorRT cannot create an execution context for {self.engine_path}: "
                               f"{self.logger.last_error()} (is the GPU out of memory?)")
        return context

    def _bind(self, context) -> None:
        context.set_tensor_address(self.input_name, self.input_buffer.data_ptr())
        context.set_tensor_address(self.output_name, self.output_buffer.data_ptr())

    def _set_rows(self, context, rows: int) -> None:
        shape = (rows, *self.input_buffer.shape[1:])
        if not context.set_input_shape(self.input_name, shape):
            raise ReidctlError(f"TensorRT refused input shape {list(shape)} for {self.engine_path}: "
                               f"{self.logger.last_error()}")

    def _context(self, rows: int):
        """The context for a batch of ``rows``, created and shaped on first use, re-shaped only when shared."""
        key = self.plan.context_key(rows)
        context = self._contexts.get(key)
        if context is None:
            context = self._new_context()
            self._bind(context)
            self._contexts[key] = context
        if self._context_rows.get(key) != rows:
            self._set_rows(context, rows)
            self._context_rows[key] = rows
        return context

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": str(self.device),
            "engine": str(self.engine_path),
            "precision": self.precision,
            "tensorrt": self.tensorrt_version,
            "batch": f"{self.min_batch}-{self.max_batch}",
            "cuda_graph": self.plan.cuda_graphs,
        }

    def peak_memory_bytes(self) -> int | None:
        own_blocks = 0 if self._activations is not None else len(self._contexts)  # shared: torch counts it
        return torch.cuda.max_memory_allocated(self.device) + own_blocks * self._engine_memory

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise ReidctlError(f"TensorRT inference failed: {self.logger.last_error()}")

    def _capture(self, rows: int, context) -> torch.cuda.CUDAGraph | None:
        """Capture ``context`` as the graph for ``rows``; None (graphs turned off, said once) if that fails."""
        # One plain run first: TensorRT does its shape-dependent setup on the first enqueue, outside any capture.
        self._enqueue(context)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        enqueued, capture_error = False, None
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                enqueued = context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError as exc:  # the capture itself failed (CUDA left it invalidated)
            capture_error = first_line(exc)
        reason = capture_failure(enqueued, capture_error, self.logger.last_error())
        if reason is None:
            self.plan.mark_captured(rows)
            self._graphs[rows] = graph
            return graph
        warning = self.plan.disable_graphs(reason)
        if warning:
            self.warn(warning)
        self._drop_graph_contexts()
        return None

    def _drop_graph_contexts(self) -> None:
        """After graphs are turned off: free the graphs and the per-size contexts; one shared context remains."""
        self.stream.synchronize()
        self._graphs.clear()
        for key in [k for k in self._contexts if k != SHARED_CONTEXT]:
            del self._contexts[key], self._context_rows[key]

    def _run(self, rows: int) -> None:
        if self.plan.cuda_graphs:
            context = self._context(rows)
            graph = self._capture(rows, context) if self.plan.needs_capture(rows) else self._graphs[rows]
            if graph is not None:
                graph.replay()
                return
        self._enqueue(self._context(rows))

    def _execute(self, chunk: torch.Tensor) -> torch.Tensor:
        rows = len(chunk)
        caller_stream = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller_stream)  # the chunk was produced on the caller's stream
        with torch.cuda.stream(self.stream):
            self.input_buffer[:rows].copy_(chunk, non_blocking=True)
            self._run(rows)
        caller_stream.wait_stream(self.stream)
        return self.output_buffer[:rows].clone()  # on the caller's stream; the buffer is reused by the next call

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return infer_in_batches(batch, self._execute, self.min_batch, self.max_batch)

    def close(self) -> None:
        self._graphs.clear()
        self._contexts.clear()
        for name in ("engine", "runtime", "input_buffer", "output_buffer", "_activations"):
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
        check_engine_compatibility(sidecar, current_platform(trt.__version__, device), engine_path)
    metadata = None
    if sidecar and sidecar.get("metadata"):
        metadata = OnnxMetadata.from_dict(sidecar["metadata"], sidecar_path(engine_path))
    decoded = artifact_decoded(metadata, det, engine_path, warn)
    return TensorRTRunner(engine_path, device, decoded, det.tensorrt.cuda_graph,
                          sidecar.get("precision") if sidecar else None, warn)


register(
    Backend(
        "tensorrt",
        "TensorRT engine (detection.tensorrt.engine_path), CUDA graphs",
        availability=tensorrt_unavailable_reason,
        make_runner=make_runner,
        simplicity=2,
        artifact=Artifact.ENGINE,
        config_keys=("onnx_path",),
        config_section="tensorrt",
        packages=("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    )
)
