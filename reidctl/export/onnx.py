"""ONNX export of YOLOX, the reidctl metadata inside the file, reading ONNX files back and ONNX Runtime sessions.

Every later step (engine build, the ONNX Runtime and TensorRT backends) reads model type, class count, input
size, precision and decode mode from the file's ``metadata_props`` instead of guessing them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from reidctl import __version__
from reidctl.core.preprocess import sample_input
from reidctl.errors import ReidctlError, first_line
from reidctl.export.opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from reidctl.io.atomic import atomic_path
from reidctl.models.checkpoint import ModelSpec
from reidctl.models.loader import fuse_conv_bn
from reidctl.models.yolox import STRIDES, YOLOX, decode_predictions

INPUT_NAME = "images"  # as in ByteTrack's ONNX
OUTPUT_NAME = "output"
ONNX_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16}
PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16"}
ORT_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


def default_onnx_path(detection) -> Path:
    """detection.onnx_path, else the TensorRT engine path with .onnx: the file export-onnx writes by default."""
    if detection.onnx_path:
        return Path(detection.onnx_path)
    return Path(detection.tensorrt.engine_path).with_suffix(".onnx")


@dataclass(frozen=True)
class OnnxMetadata:
    """What reidctl writes into an ONNX file's metadata_props (all values are strings there)."""

    model_type: str  # YOLOX size: nano, tiny, s, m, l, x
    num_classes: int
    input_size: tuple[int, int]  # height, width
    precision: str  # fp32 | fp16: the input's and the weights' type; the output is always fp32
    decoded: bool  # True: boxes in input pixels; False: raw head output (ByteTrack's export)
    batch: int | None  # None: dynamic batch dimension
    reidctl_version: str = __version__

    def to_props(self) -> dict[str, str]:
        return {
            "reidctl_version": self.reidctl_version,
            "model_type": self.model_type,
            "num_classes": str(self.num_classes),
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "precision": self.precision,
            "decoded": "true" if self.decoded else "false",
            "batch": "dynamic" if self.batch is None else str(self.batch),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: Path | str) -> OnnxMetadata | None:
        """The metadata, or None for a file reidctl did not write (ByteTrack's own export, for instance)."""
        if "reidctl_version" not in props:
            return None

        def parsed(key: str, parse: Callable[[str], object]):
            try:
                return parse(props[key])
            except (KeyError, ValueError):
                value = props.get(key)
                raise ReidctlError(f"{source}: reidctl metadata '{key}' is missing or malformed ({value!r})") from None

        return cls(
            model_type=parsed("model_type", str),
            num_classes=parsed("num_classes", int),
            input_size=parsed("input_size", _parse_size),
            precision=parsed("precision", lambda v: _one_of(v, PRECISIONS.values())),
            decoded=parsed("decoded", lambda v: _one_of(v, ("true", "false")) == "true"),
            batch=parsed("batch", lambda v: None if v == "dynamic" else int(v)),
            reidctl_version=props["reidctl_version"],
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, data: dict, source: Path | str) -> OnnxMetadata:
        """Inverse of ``as_dict`` (engine sidecars hold the metadata in this form)."""
        try:
            return cls(**{**data, "input_size": tuple(data["input_size"])})
        except (KeyError, TypeError):
            raise ReidctlError(
                f"{source}: the model metadata is malformed; rebuild it (reidctl build-engine)"
            ) from None


def _parse_size(value: str) -> tuple[int, int]:
    height, width = value.split("x")
    return int(height), int(width)


def _one_of(value: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(value)
    return value


def write_metadata(model: onnx.ModelProto, metadata: OnnxMetadata) -> None:
    existing = {prop.key: prop.value for prop in model.metadata_props}
    onnx.helper.set_model_props(model, {**existing, **metadata.to_props()})


def read_metadata(model: onnx.ModelProto, source: Path | str) -> OnnxMetadata | None:
    return OnnxMetadata.from_props({prop.key: prop.value for prop in model.metadata_props}, source)


@dataclass(frozen=True)
class OnnxInfo:
    """An ONNX detector's interface, read from the graph itself, and its reidctl metadata if any."""

    path: Path
    input_name: str
    output_name: str
    input_dtype: torch.dtype
    input_size: tuple[int, int]
    batch: int | None  # None: dynamic
    opset: int
    metadata: OnnxMetadata | None

    @property
    def precision(self) -> str:
        return PRECISIONS[self.input_dtype]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def read_onnx(path: Path) -> OnnxInfo:
    """Open an ONNX detector (weights not loaded) and check it takes one NCHW image batch and returns one tensor."""
    path = Path(path)
    if not path.is_file():
        raise ReidctlError(f"ONNX model not found: {path} (create it with `reidctl export-onnx`)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError):
        raise ReidctlError(f"{path} is not a readable ONNX model (corrupt or truncated?)") from None
    graph_inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        raise ReidctlError(f"{path} is not a YOLOX detector: expected one input and one output")
    image, output = graph_inputs[0], model.graph.output[0]
    dims = _dims(image)
    elem_type = image.type.tensor_type.elem_type
    if len(dims) != 4 or dims[1] != 3 or dims[2] is None or dims[3] is None:
        raise ReidctlError(f"{path} is not a YOLOX detector: input '{image.name}' is not (batch, 3, height, width)")
    if elem_type not in ONNX_DTYPES:
        raise ReidctlError(
            f"{path}: input '{image.name}' has type {onnx.TensorProto.DataType.Name(elem_type)}, "
            "expected FLOAT or FLOAT16"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxInfo(
        path,
        image.name,
        output.name,
        ONNX_DTYPES[elem_type],
        (dims[2], dims[3]),
        dims[0],
        opset,
        read_metadata(model, path),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_session(path: Path, providers: Sequence = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not actionable for users
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except ORT_ERRORS as exc:
        raise ReidctlError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None


@dataclass(frozen=True)
class Tolerance:
    box_rel: float  # |Δ| / max(|reference|, box scale) on the four box columns (compare_outputs)
    score_abs: float  # |Δ| on objectness and class scores


# fp16 carries ~3 significant digits; through a deep network boxes and scores move by up to about 1%.
TOLERANCES = {"fp32": Tolerance(box_rel=1e-3, score_abs=1e-3), "fp16": Tolerance(box_rel=2e-2, score_abs=2e-2)}


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    box_rel_diff: float
    score_abs_diff: float

    def within(self, tolerance: Tolerance) -> bool:
        return self.box_rel_diff <= tolerance.box_rel and self.score_abs_diff <= tolerance.score_abs


def box_scale(decoded: bool) -> float:
    """The smallest value a box column's difference is taken relative to. A decoded box is the head's output in grid
    cells times its level's stride, so its error is the head's error times up to the coarsest stride (32 px), however
    small the coordinate: an fp16 error of 1e-3 cells near the origin is 0.03 px."""
    return float(STRIDES[-1]) if decoded else 1.0


def compare_outputs(actual: np.ndarray, reference: np.ndarray, decoded: bool) -> Comparison:
    """How far detector outputs (B, anchors, 5 + classes) are from a reference of the same shape; ``decoded``: boxes
    in input pixels (else raw head output, in grid cells)."""
    if actual.shape != reference.shape:
        raise ReidctlError(f"output shape {actual.shape} differs from the reference's {reference.shape}")
    diff = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    box_rel = diff[..., :4] / np.maximum(np.abs(reference[..., :4]), box_scale(decoded))
    return Comparison(float(diff.max()), float(box_rel.max()), float(diff[..., 4:].max()))


class _ExportModule(nn.Module):
    """YOLOX whose raw head output is cast to fp32 and, if asked, decoded: the output is fp32 at every precision
    (fp16 spacing is 0.5 px above 512, too coarse for box coordinates)."""

    def __init__(self, model: YOLOX, input_size: tuple[int, int], decode: bool):
        super().__init__()
        model.head.decode = False
        self.model = model
        self.input_size = tuple(input_size)
        self.decode = decode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.model(images).float()
        return decode_predictions(raw, self.input_size) if self.decode else raw


def _onnxslim():
    """onnxslim, imported only here: it is slow to import and only --simplify needs it."""
    try:
        import onnxslim
    except ImportError:
        raise ReidctlError("--simplify needs onnxslim: pip install onnxslim (or export with --no-simplify)") from None
    return onnxslim


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size_bytes: int
    opset: int
    metadata: OnnxMetadata
    comparison: Comparison
    tolerance: Tolerance
    seconds: float

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "metadata": self.metadata.as_dict(),
            "verification": {**dataclasses.asdict(self.comparison), "tolerance": dataclasses.asdict(self.tolerance)},
            "seconds": self.seconds,
        }


def _trace(module: nn.Module, sample: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer warnings about the constant anchor grid.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (sample,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ReidctlError(f"ONNX export failed: {first_line(exc)}") from None


def _fix_output_dims(model: onnx.ModelProto, shape: Sequence[int], dynamic_batch: bool) -> None:
    """The exporter leaves anchor and channel counts symbolic; write the known values for later tools."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for i, (dim, size) in enumerate(zip(dims, shape)):
        if i == 0 and dynamic_batch:
            dim.dim_param = "batch"
        else:
            dim.dim_value = int(size)


def export_onnx(
    model: YOLOX,
    spec: ModelSpec,
    output: Path,
    input_size: tuple[int, int],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    dynamic_batch: bool = True,
    batch: int = 1,
    simplify: bool = True,
    decode: bool = True,
    tolerance: Tolerance | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ExportResult:
    """Export ``model`` (BatchNorm folded in place) to ``output``, check the graph and verify it with ONNX Runtime
    against the fp32 PyTorch model on the same input. Over ``tolerance`` nothing is written.

    ``on_progress(step, done, total)`` hears each step as it begins, with the steps done before it, and ("done",
    total, total) once the file is in place.

    fp16 graphs are traced on the CPU in half precision (torch's CPU kernels cover YOLOX's layers), so no GPU and
    no separate fp32-to-fp16 graph conversion are needed; the input becomes fp16, the output stays fp32.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ReidctlError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET}")
    if batch < 1:
        raise ReidctlError(f"batch must be at least 1, got {batch}")

    precision = "fp16" if fp16 else "fp32"
    tolerance = tolerance or TOLERANCES[precision]
    metadata = OnnxMetadata(
        spec.size, spec.num_classes, tuple(input_size), precision, decode, None if dynamic_batch else batch
    )
    reference_module = _ExportModule(fuse_conv_bn(model).float().eval(), input_size, decode)
    export_module = copy.deepcopy(reference_module).half() if fp16 else reference_module
    # A dynamic graph is verified at batch 2, which proves the batch axis really is dynamic.
    sample = sample_input(2 if dynamic_batch else batch, input_size)
    steps = ["tracing the model", *(["simplifying (onnxslim)"] if simplify else []), "checking the graph",
             "verifying with ONNX Runtime"]

    def step(name: str) -> None:
        if on_progress:
            on_progress(name, steps.index(name), len(steps))

    started = time.perf_counter()
    with atomic_path(Path(output)) as tmp:
        step("tracing the model")
        _trace(export_module, sample.to(torch.float16 if fp16 else torch.float32), tmp, opset, dynamic_batch)
        proto = onnx.load(str(tmp))
        if simplify:
            step("simplifying (onnxslim)")
            proto = _onnxslim().slim(proto)
        step("checking the graph")
        with torch.no_grad():
            reference = reference_module(sample).numpy()
        _fix_output_dims(proto, reference.shape, dynamic_batch)
        write_metadata(proto, metadata)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ReidctlError(f"exported graph is invalid: {first_line(exc)}") from None
        onnx.save(proto, str(tmp))
        step("verifying with ONNX Runtime")
        session = create_session(tmp)
        actual = session.run(None, {INPUT_NAME: sample.numpy().astype(np.float16 if fp16 else np.float32)})[0]
        comparison = compare_outputs(actual, reference, decode)
        if not comparison.within(tolerance):
            raise ReidctlError(
                f"ONNX Runtime disagrees with PyTorch: box rel. diff {comparison.box_rel_diff:.2e} "
                f"(tolerance {tolerance.box_rel:.0e}), score diff {comparison.score_abs_diff:.2e} "
                f"(tolerance {tolerance.score_abs:.0e}); nothing written"
            )
    if on_progress:
        on_progress("done", len(steps), len(steps))
    return ExportResult(
        Path(output), Path(output).stat().st_size, opset, metadata, comparison, tolerance, time.perf_counter() - started
    )
