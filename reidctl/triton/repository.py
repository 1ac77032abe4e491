"""The Triton model repository `reidctl setup-triton` writes, and the renderer of its config.pbtxt files.

Two models, one repository:
  bytetrack_tensorrt  the TensorRT engine (platform tensorrt_plan), served by NVIDIA's container (docker-compose.yml)
  bytetrack_pytorch   a python-backend model running reidctl's own PyTorch runner, served by the bundled server

The committed ``model_repository/`` holds the python model's source; config.pbtxt files are rendered here from the
config, as protobuf messages of Triton's own schema, so what is written is what Triton parses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

import reidctl
from reidctl.config import Config, DetectionConfig, override
from reidctl.errors import ReidctlError
from reidctl.io.atomic import atomic_path, ensure_writable_dir, write_text_atomic

PYTHON_MODEL = "bytetrack_pytorch"
TENSORRT_MODEL = "bytetrack_tensorrt"
PYTHON_INPUT = "frames"
PYTHON_OUTPUT = "detections"
PYTHON_COUNT_OUTPUT = "num_detections"
TENSORRT_INPUT = "images"
TENSORRT_OUTPUT = "output"
# Triton 2.51 is the release that nvidia-pytriton 0.7.0 bundles: the container serves the same server version.
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

TEMPLATE_DIR = Path(reidctl.__file__).resolve().parents[1] / "model_repository"
PYTHON_MODEL_SOURCE = TEMPLATE_DIR / PYTHON_MODEL / "1" / "model.py"

# The DetectionConfig fields the python model needs to build its runner, passed as config.pbtxt parameters.
PYTHON_MODEL_FIELDS = (
    "model_path", "model_type", "num_classes", "test_size", "device", "fp16", "fuse", "cuda_graph", "compile",
    "conf_threshold", "nms_threshold",
)  # fmt: skip

_DTYPE_ALIASES = {
    "fp16": "FP16", "float16": "FP16", "half": "FP16",
    "fp32": "FP32", "float32": "FP32", "float": "FP32",
    "bf16": "BF16", "bfloat16": "BF16",
    "uint8": "UINT8", "int8": "INT8", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
}  # fmt: skip


def _model_config_pb2():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton declares it: dims without the batch dimension."""

    name: str
    dims: tuple[int, ...]
    data_type: str  # Triton's name without TYPE_, e.g. "FP16"


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    what: str


def anchor_count(test_size: tuple[int, int]) -> int:
    from reidctl.models.yolox import STRIDES  # torch: imported where used, so `reidctl --help` stays light

    return sum((test_size[0] // s) * (test_size[1] // s) for s in STRIDES)


def model_num_classes(detection: DetectionConfig) -> int:
    """Class count of the configured model: from the checkpoint when there is one, else from model_type."""
    from reidctl.models.checkpoint import read_state_dict, resolve_spec

    path = Path(detection.model_path) if detection.model_path else None
    state = read_state_dict(path) if path is not None else None
    return resolve_spec(detection.model_type, detection.num_classes, state, path or "checkpoint").num_classes


def triton_dtype(value, where: str) -> str:
    name = str(value).lower().removeprefix("type_").removeprefix("datatype.").removeprefix("torch.")
    if name not in _DTYPE_ALIASES:
        raise ReidctlError(f"{where}: unknown data type {value!r}")
    return _DTYPE_ALIASES[name]


def _sidecar_tensors(sidecar: Path, data: dict, key: str, rank: int) -> list[TensorSpec]:
    """Tensors of an engine's JSON sidecar; shapes may carry TensorRT's batch dimension first (dropped)."""
    entries = data.get(key)
    if not isinstance(entries, list) or not entries:
        raise ReidctlError(f"{sidecar}: key '{key}' must be a non-empty list of {{name, shape, dtype}}")
    tensors = []
    for i, entry in enumerate(entries):
        where = f"{sidecar}: {key}[{i}]"
        if not isinstance(entry, dict) or not {"name", "shape", "dtype"} <= entry.keys():
            raise ReidctlError(f"{where} must have name, shape and dtype")
        shape = [d if isinstance(d, int) else -1 for d in entry["shape"]]
        if len(shape) == rank + 1:
            shape = shape[1:]
        elif len(shape) != rank:
            raise ReidctlError(f"{where}: shape {entry['shape']} has neither {rank} dims nor a batch dim plus {rank}")
        tensors.append(TensorSpec(str(entry["name"]), tuple(shape), triton_dtype(entry["dtype"], where)))
    return tensors


def engine_io(engine: Path, detection: DetectionConfig, num_classes: int) -> tuple[list[TensorSpec], list[TensorSpec], str]:
    """The TensorRT model's inputs and outputs: from ``<engine>.json`` when present, else reidctl's export defaults."""
    sidecar = Path(f"{engine}.json")
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReidctlError(f"{sidecar} is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ReidctlError(f"{sidecar} must hold a JSON object")
        return _sidecar_tensors(sidecar, data, "inputs", 3), _sidecar_tensors(sidecar, data, "outputs", 2), str(sidecar)
    dtype = "FP16" if detection.tensorrt.fp16 else "FP32"
    height, width = detection.input_size
    inputs = [TensorSpec(TENSORRT_INPUT, (3, height, width), dtype)]
    outputs = [TensorSpec(TENSORRT_OUTPUT, (anchor_count((height, width)), 5 + num_classes), dtype)]
    return inputs, outputs, "defaults (no engine sidecar)"


def _new_config(name: str, triton, kind: str):
    pb = _model_config_pb2()
    config = pb.ModelConfig(name=name, max_batch_size=triton.max_batch_size)
    config.dynamic_batching.preferred_batch_size.extend(triton.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = round(triton.max_queue_delay_ms * 1000)
    group = config.instance_group.add()
    group.count = triton.instances
    group.kind = pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind}")
    return config


def _add_tensors(field, tensors: list[TensorSpec]) -> None:
    pb = _model_config_pb2()
    for tensor in tensors:
        entry = field.add()
        entry.name = tensor.name
        entry.data_type = pb.DataType.Value(f"TYPE_{tensor.data_type}")
        entry.dims.extend(tensor.dims)


def check_batching(triton) -> None:
    if triton.instances < 1:
        raise ReidctlError(f"config key 'detection.triton.instances': expected >= 1, got {triton.instances}")
    if triton.max_batch_size < 1:
        raise ReidctlError(f"config key 'detection.triton.max_batch_size': expected >= 1, got {triton.max_batch_size}")
    too_large = [b for b in triton.preferred_batch_sizes if not 1 <= b <= triton.max_batch_size]
    if too_large:
        raise ReidctlError(
            f"config key 'detection.triton.preferred_batch_sizes': {too_large[0]} is outside 1..max_batch_size "
            f"({triton.max_batch_size})"
        )


def tensorrt_model_config(detection: DetectionConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]):
    config = _new_config(TENSORRT_MODEL, detection.triton, "GPU")
    config.platform = "tensorrt_plan"
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    config.optimization.cuda.graphs = detection.tensorrt.cuda_graph
    return config


def python_instance_kind(device: str) -> str:
    """Where Triton places the python model's instance: a GPU unless the config pins the CPU or none is here."""
    if device == "cpu":
        return "CPU"
    if device == "auto":
        import torch

        return "GPU" if torch.cuda.is_available() else "CPU"
    return "GPU"


def server_compiles(detection: DetectionConfig) -> bool:
    """The python model's default: torch.compile on a GPU instance, where a long-lived server repays the minute
    it takes at start (H100: a frame's model step 3.5 -> 2.3 ms); elsewhere the config's ``compile``."""
    return detection.compile or python_instance_kind(detection.device) == "GPU"


def python_model_config(detection: DetectionConfig):
    from reidctl.engine.postprocess import DETECTION_COLUMNS

    config = _new_config(PYTHON_MODEL, detection.triton, python_instance_kind(detection.device))
    config.backend = "python"
    height, width = detection.input_size
    _add_tensors(config.input, [TensorSpec(PYTHON_INPUT, (height, width, 3), "UINT8")])
    rows = TensorSpec(PYTHON_OUTPUT, (-1, len(DETECTION_COLUMNS)), "FP32")  # per frame: N rows, zero-padded
    _add_tensors(config.output, [rows, TensorSpec(PYTHON_COUNT_OUTPUT, (1,), "INT32")])
    for key, value in python_model_parameters(detection).items():
        config.parameters[key].string_value = value
    return config


def python_model_parameters(detection: DetectionConfig) -> dict[str, str]:
    """DetectionConfig fields as config.pbtxt string parameters (the server's working directory differs: absolute paths)."""
    values = {name: getattr(detection, name) for name in PYTHON_MODEL_FIELDS}
    if values["model_path"]:
        values["model_path"] = str(Path(values["model_path"]).resolve())
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items() if v is not None}


def config_from_parameters(parameters: dict[str, str]) -> Config:
    """The inverse of ``python_model_parameters``: what the python model builds its runner from."""
    hints = typing.get_type_hints(DetectionConfig)
    values = {}
    for name in PYTHON_MODEL_FIELDS:
        text = parameters.get(name, "")
        if text == "":
            continue
        values[name] = text if hints[name] in (str, str | None) else yaml.safe_load(text)
    return override(Config(), **values)


def render(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def read_model_config(path: Path):
    """A config.pbtxt parsed with Triton's schema."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(), _model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise ReidctlError(f"{path} is not a valid Triton model config ({exc})") from None


def compose_file(triton, repository: Path, image: str) -> str:
    """docker-compose.yml for NVIDIA's container serving the TensorRT model from this repository."""
    service = {
        "image": image,
        "command": [
            "tritonserver",
            "--model-repository=/models",
            "--model-control-mode=explicit",
            f"--load-model={TENSORRT_MODEL}",  # the python model needs reidctl, which the container lacks
        ],
        "ports": [
            f"{triton.http_port}:{CONTAINER_PORTS['http']}",
            f"{triton.grpc_port}:{CONTAINER_PORTS['grpc']}",
            f"{triton.metrics_port}:{CONTAINER_PORTS['metrics']}",
        ],
        "volumes": [f"{repository.resolve()}:/models:ro"],
        "ipc": "host",  # clients on this host pass frames through system shared memory
        "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}},
        "healthcheck": {
            "test": ["CMD", "curl", "-sf", f"localhost:{CONTAINER_PORTS['http']}/v2/health/ready"],
            "interval": "10s",
            "retries": 30,
        },
        "restart": "unless-stopped",
    }
    header = (
        "# Written by `reidctl setup-triton`. Start: docker compose up -d triton\n"
        f"# Verify: curl localhost:{triton.http_port}/v2/health/ready\n"
    )
    return header + yaml.safe_dump({"services": {"triton": service}}, sort_keys=False)


def _copy_atomic(source: Path, target: Path) -> None:
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_repository(
    config: Config,
    repository: Path,
    engine: Path | None = None,
    image: str = DEFAULT_IMAGE,
    warn: Callable[[str], None] = print,
) -> list[WrittenFile]:
    """Write both models and docker-compose.yml; a missing engine leaves model.plan out with one warning."""
    detection = config.detection
    check_batching(detection.triton)
    if not PYTHON_MODEL_SOURCE.is_file():
        raise ReidctlError(f"the python model source is missing: {PYTHON_MODEL_SOURCE} (reinstall reidctl from its repository)")
    repository = Path(repository)
    ensure_writable_dir(repository)
    num_classes = model_num_classes(detection)
    engine = Path(engine or detection.tensorrt.engine_path)
    inputs, outputs, io_source = engine_io(engine, detection, num_classes)
    written = []

    trt_dir = repository / TENSORRT_MODEL
    write_text_atomic(trt_dir / "config.pbtxt", render(tensorrt_model_config(detection, inputs, outputs)))
    written.append(WrittenFile(trt_dir / "config.pbtxt", f"TensorRT model config (I/O: {io_source})"))
    if engine.is_file():
        _copy_atomic(engine, trt_dir / "1" / "model.plan")
        written.append(WrittenFile(trt_dir / "1" / "model.plan", f"engine copied from {engine}"))
    else:
        ensure_writable_dir(trt_dir / "1")
        warn(f"warning: TensorRT engine {engine} not found: {TENSORRT_MODEL}/1/model.plan not written (rerun with --engine PATH)")

    py_dir = repository / PYTHON_MODEL
    write_text_atomic(py_dir / "config.pbtxt", render(python_model_config(detection)))
    written.append(WrittenFile(py_dir / "config.pbtxt", "python-backend model config"))
    _copy_atomic(PYTHON_MODEL_SOURCE, py_dir / "1" / "model.py")
    written.append(WrittenFile(py_dir / "1" / "model.py", "python-backend model (reidctl PyTorch runner and NMS)"))

    write_text_atomic(repository / "docker-compose.yml", compose_file(detection.triton, repository, image))
    written.append(WrittenFile(repository / "docker-compose.yml", f"NGC container {image}"))
    return written


_DTYPE_BYTES = {"TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_BOOL": 1, "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_FP32": 4,
                "TYPE_INT32": 4, "TYPE_INT64": 8, "TYPE_FP64": 8}  # fmt: skip


def batch_input_bytes(repository: Path, model: str) -> int:
    """Bytes of one full batch of ``model``'s inputs (variable dims counted as 1)."""
    config = read_model_config(Path(repository) / model / "config.pbtxt")
    pb = _model_config_pb2()
    per_item = 0
    for tensor in config.input:
        elements = math.prod(max(1, d) for d in tensor.dims)
        per_item += elements * _DTYPE_BYTES.get(pb.DataType.Name(tensor.data_type), 8)
    return max(1, config.max_batch_size) * per_item


def served_models(repository: Path, backend: str) -> list[str]:
    """Names of the repository's models that run on ``backend`` (e.g. the python ones the bundled server can load)."""
    names = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        if read_model_config(config_path).backend == backend:
            names.append(config_path.parent.name)
    return names

