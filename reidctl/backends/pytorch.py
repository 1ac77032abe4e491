"""PyTorch backend: a runner with fp16, Conv+BN fusion, channels_last, timed cuDNN algorithms and CUDA graphs."""

from __future__ import annotations

import threading

import torch
from torch import nn

from reidctl.core.detector import Runner
from reidctl.core.registry import Artifact, Backend, register
from reidctl.core.device import resolve_device
from reidctl.core.preprocess import mean_std, normalize
from reidctl.errors import print_warning
from reidctl.models.checkpoint import ModelSpec
from reidctl.models.loader import fuse_conv_bn, load_detection_model
from reidctl.models.yolox import YOLOX, anchor_grids, decode_predictions

# One warm-up and capture at a time in the process: cuDNN's algorithm search (cudnn.benchmark) during one runner's
# warm-up invalidated another runner's capture on the same GPU (two batches in flight, first batches at once).
_CAPTURE_LOCK = threading.Lock()


class _CanvasModel(nn.Module):
    """Normalisation + YOLOX + decoding as one module, so a CUDA graph or compiled graph covers all three.

    Its constants (mean/std, anchor grids for ``input_size``) are buffers on the model's device: torch.compile
    then sees device tensors instead of tracing their host-side construction.
    """

    def __init__(self, model: YOLOX, dtype: torch.dtype, input_size: tuple[int, int], device: torch.device):
        super().__init__()
        model.head.decode = False
        self.model = model
        self.dtype = dtype
        self.input_size = tuple(input_size)
        for name, value in zip(("mean", "std"), mean_std(device)):
            self.register_buffer(name, value.clone(), persistent=False)
        # Decode in fp32: fp16 spacing is 0.5 px for coordinates above 512.
        for name, value in zip(("grids", "strides"), anchor_grids(self.input_size, torch.float32, device)):
            self.register_buffer(name, value.clone(), persistent=False)

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        x = normalize(canvas, self.dtype, (self.mean, self.std)).contiguous(memory_format=torch.channels_last)
        return decode_predictions(self.model(x).float(), self.input_size, (self.grids, self.strides))


class PyTorchRunner(Runner):
    name = "pytorch"
    input_format = "canvas"

    def __init__(
        self,
        model: YOLOX,
        spec: ModelSpec,
        device: torch.device,
        input_size: tuple[int, int],
        fp16: bool = True,
        fuse: bool = True,
        cuda_graph: bool = True,
        compile: bool = False,
    ):
        self.spec = spec
        self.device = device
        on_gpu = device.type == "cuda"
        # fp16 only pays off (and is only well supported) on the GPU.
        self.dtype = torch.float16 if (fp16 and on_gpu) else torch.float32
        if on_gpu:
            # Time cuDNN's convolution algorithms once per input shape (in the warm-up before a graph capture) instead
            # of taking its heuristic pick: a faster model step (docs/PERFORMANCE.md, figures behind choices: the model
            # step by batch size).
            torch.backends.cudnn.benchmark = True
        self.fused = fuse
        if fuse:
            fuse_conv_bn(model)
        model = model.to(device=device, dtype=self.dtype).to(memory_format=torch.channels_last).eval()
        self.module: nn.Module = _CanvasModel(model, self.dtype, input_size, device)
        self.compiled = compile
        if compile:
            # Default (automatic) dynamic shapes: the first batch size compiles static, the second recompiles with
            # a symbolic batch that every later size reuses: two compiles instead of one per batch size.
            self.module = torch.compile(self.module)
        self.use_cuda_graph = cuda_graph and on_gpu
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": str(self.device),
            "model": self.spec.label,
            "precision": "fp16" if self.dtype == torch.float16 else "fp32",
            "fused": self.fused,
            "cuda_graph": self.use_cuda_graph,
            "compile": self.compiled,
        }

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.use_cuda_graph:
            return self.module(batch)
        graph, static_in, static_out = self._graph_for(batch)
        static_in.copy_(batch, non_blocking=True)
        graph.replay()
        return static_out.clone()

    def _graph_for(self, batch: torch.Tensor):
        key = tuple(batch.shape)
        if key not in self._graphs:
            with _CAPTURE_LOCK:
                self._graphs[key] = self._capture(batch)
        return self._graphs[key]

    def _capture(self, batch: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """The CUDA graph for ``batch``'s shape, its static input and output."""
        static_in = batch.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up kernels, cuDNN autotuning and cached anchor grids before capture
                self.module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Captured on this device's own stream: torch.cuda.graph's default capture stream is one per process, made
        # on the GPU current when the first graph was captured. Thread-local: another device's runner, working
        # in another thread meanwhile, must not void the capture.
        with torch.cuda.graph(graph, pool=self._pool, stream=side, capture_error_mode="thread_local"):
            static_out = self.module(static_in)
        self._pool = graph.pool()  # graphs for other batch sizes share one memory pool
        return graph, static_in, static_out

    def close(self) -> None:
        self._graphs.clear()


def make_runner(config, warn=print_warning) -> PyTorchRunner:
    det = config.detection
    device = resolve_device(det.device)
    model, spec = load_detection_model(det, warn)
    return PyTorchRunner(model, spec, device, det.input_size, det.fp16, det.fuse, det.cuda_graph, det.compile)


register(
    Backend(
        "pytorch",
        "PyTorch eager (CUDA graphs on GPU)",
        availability=lambda: None,
        make_runner=make_runner,
        simplicity=0,
        artifact=Artifact.CHECKPOINT,
        config_keys=("fuse", "cuda_graph", "compile"),
        precision_from_config=True,
        packages=("torch",),
    )
)
