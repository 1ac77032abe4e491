"""The Triton model repository `reidctl setup-triton` writes, and the renderer of its config.pbtxt files.

Two models, one repository:
  bytetrack_tensorrt  the TensorRT engine (platform tensorrt_plan), served by NVIDIA's container (docker-compose.yml)
  bytetrack_pytorch   a python-backend model running reidctl's own PyTorch runner, served by the bundled server

The committed ``model_repository/`` holds the python model's source; config.pbtxt files are rendered here from the
config, as protobuf messages of Triton's own schema, so what is written is what Triton parses.
docker-compose.yml and its .env come from reidctl.triton.compose, the GPUs the models use from
reidctl.triton.placement.
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

import reidctl
from reidctl.config import Config, DetectionConfig, override
from reidctl.errors import ReidctlError
from reidctl.io.atomic import atomic_path, ensure_writable_dir, write_text_atomic
from reidctl.triton.access import check_listen_address
from reidctl.triton.compose import (
    DEFAULT_IMAGE,
    REPLICA_PORT_STEP,
    compose_file,
    image_tensorrt_warning,
    replica_ports,
    write_compose_key,
)
from reidctl.triton.placement import GPUS_KEY, gpu_placement, gpus_text, placed_on_gpus, visible_gpu_count

PYTHON_MODEL = "bytetrack_pytorch"
TENSORRT_MODEL = "bytetrack_tensorrt"
PYTHON_INPUT = "frames"
PYTHON_OUTPUT = "detections"
PYTHON_COUNT_OUTPUT = "num_detections"
PYTHON_SERVER_OUTPUT = "server_seconds"  # per frame: its request's seconds from the model's execute to its response
# The python model's counter of the batches it runs, labelled by their frames, on the server's metrics port: Triton's
# own statistics count the model's execute calls, which only hand frames over to its batches.
BATCH_METRIC = "reidctl_batches"
# Its counter of the seconds each stage of its work took, labelled by stage: "staging" (an execute call: the requests'
# frames into pinned memory and onto the GPU), "waiting" (each request, from staged to its batch's start), "model"
# (each batch's model, on the GPU), "nms" (each batch, the rest of its start to its rows on the host: the GPU busy
# before the model, NMS, the rows' copy) and "responding" (each batch, its requests' responses built and sent).
STAGE_METRIC = "reidctl_stage_seconds"
SERVER_STAGES = ("staging", "waiting", "model", "nms", "responding")
# The python backend's parameter that lets an input stay in GPU memory (CUDA shared memory) instead of being copied to
# the host for the model: "no" lets it stay.
HOST_INPUTS_PARAMETER = "FORCE_CPU_ONLY_INPUT_TENSORS"

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
    """One model input or output as Triton declares it: dims without the batch dimension when Triton batches."""

    name: str
    dims: tuple[int, ...]
    data_type: str  # Triton's name without TYPE_, e.g. "FP16"


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    what: str


def triton_dtype(value, where: str) -> str:
    name = str(value).lower().removeprefix("type_").removeprefix("datatype.").removeprefix("torch.")
    if name not in _DTYPE_ALIASES:
        raise ReidctlError(f"{where}: unknown data type {value!r}")
    return _DTYPE_ALIASES[name]


def _sidecar_tensors(sidecar: Path, data: dict, key: str, rank: int) -> list[TensorSpec]:
    """Tensors of an engine's JSON sidecar with TensorRT's full shapes, batch dimension first (-1: dynamic)."""
    entries = data.get(key)
    if not isinstance(entries, list) or not entries:
        raise ReidctlError(f"{sidecar}: key '{key}' must be a non-empty list of {{name, shape, dtype}}")
    tensors = []
    for i, entry in enumerate(entries):
        where = f"{sidecar}: {key}[{i}]"
        if not isinstance(entry, dict) or not {"name", "shape", "dtype"} <= entry.keys():
            raise ReidctlError(f"{where} must have name, shape and dtype")
        if not isinstance(entry["shape"], list) or len(entry["shape"]) != rank + 1:
            raise ReidctlError(f"{where}: shape {entry['shape']} must have {rank + 1} dims, the batch first")
        shape = tuple(d if isinstance(d, int) else -1 for d in entry["shape"])
        tensors.append(TensorSpec(str(entry["name"]), shape, triton_dtype(entry["dtype"], where)))
    return tensors


@dataclass(frozen=True)
class TensorRTModelIO:
    """What config.pbtxt says about the TensorRT model. No tensors: Triton completes them from the engine."""

    max_batch_size: int  # 0: a fixed-batch engine, served without Triton's batching
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str


def _profile_batches(sidecar: Path, data: dict) -> tuple[int, int]:
    profile = data.get("profile")
    batches = (profile.get("min_batch"), profile.get("max_batch")) if isinstance(profile, dict) else (None, None)
    if not all(isinstance(b, int) and b >= 1 for b in batches):
        raise ReidctlError(
            f"{sidecar}: key 'profile' must hold min_batch and max_batch: rebuild the engine (reidctl build-engine)"
        )
    return batches


def check_profile_fits(triton, profile: tuple[int, int], sidecar: Path) -> None:
    """Refuse a Triton batch setting the engine's optimization profile cannot serve (Triton would refuse the model:
    its max_batch_size may not exceed the profile's, and it sends batches of any size from 1)."""
    min_batch, max_batch = profile
    if min_batch > 1:
        raise ReidctlError(
            f"the engine's profile starts at batch {min_batch} ({sidecar}), but Triton sends batches from 1: "
            f"rebuild it with `reidctl build-engine --min-batch 1 --max-batch {max(max_batch, triton.max_batch_size)}`"
        )
    if triton.max_batch_size <= max_batch:
        return
    fits = all(size <= max_batch for size in triton.preferred_batch_sizes)
    lower = (
        f"`reidctl setup-triton --max-batch-size {max_batch}`"
        if fits
        else f"detection.triton.max_batch_size and preferred_batch_sizes at most {max_batch}"
    )
    raise ReidctlError(
        f"Triton max_batch_size {triton.max_batch_size} exceeds the engine's largest batch {max_batch} ({sidecar}): "
        f"rebuild it with `reidctl build-engine --max-batch {triton.max_batch_size}` or use {lower}"
    )


def tensorrt_model_io(sidecar_data: dict | None, sidecar: Path, triton) -> TensorRTModelIO:
    """The TensorRT model's batch size and tensors for config.pbtxt, from the engine's sidecar. Without one,
    dims and types are left to Triton, which reads them from the engine (an engine built with --fp16 by TensorRT 10
    keeps fp32 I/O, so guessing from the config would be wrong)."""
    if sidecar_data is None:
        return TensorRTModelIO(triton.max_batch_size, [], [], "completed by Triton from the engine (no sidecar)")
    inputs = _sidecar_tensors(sidecar, sidecar_data, "inputs", 3)
    outputs = _sidecar_tensors(sidecar, sidecar_data, "outputs", 2)
    if inputs[0].dims[0] != -1:  # a fixed-batch engine: Triton passes each request through whole
        return TensorRTModelIO(0, inputs, outputs, f"{sidecar} (fixed batch {inputs[0].dims[0]})")
    check_profile_fits(triton, _profile_batches(sidecar, sidecar_data), sidecar)
    return TensorRTModelIO(triton.max_batch_size, _without_batch(inputs), _without_batch(outputs), str(sidecar))


def _without_batch(tensors: list[TensorSpec]) -> list[TensorSpec]:
    return [TensorSpec(t.name, t.dims[1:], t.data_type) for t in tensors]


def _new_config(name: str, triton, kind: str, batching: bool = True):
    """A model config with the instance group and, if ``batching``, Triton's dynamic batcher (else max_batch_size 0:
    Triton allows no preferred batch size above max_batch_size). ``triton.gpus`` is resolved (``resolve_gpus``):
    a GPU group then holds ``count`` instances on each listed GPU."""
    pb = _model_config_pb2()
    config = pb.ModelConfig(name=name, max_batch_size=triton.max_batch_size if batching else 0)
    if batching:
        config.dynamic_batching.preferred_batch_size.extend(triton.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = round(triton.max_queue_delay_ms * 1000)
    group = config.instance_group.add()
    group.count = triton.instances
    group.kind = pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind}")
    if kind == "GPU" and triton.gpus is not None:
        group.gpus.extend(triton.gpus)
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


def tensorrt_model_config(detection: DetectionConfig, io: TensorRTModelIO):
    config = _new_config(TENSORRT_MODEL, detection.triton, "GPU", batching=io.max_batch_size > 0)
    config.platform = "tensorrt_plan"
    _add_tensors(config.input, io.inputs)
    _add_tensors(config.output, io.outputs)
    config.optimization.cuda.graphs = detection.tensorrt.cuda_graph
    return config


def python_instance_kind(detection: DetectionConfig) -> str:
    """Where Triton places the python model's instance: a GPU unless the config pins the CPU or none is here."""
    device = detection.device
    if device == "cpu":
        return "CPU"
    if detection.triton.gpus is not None:  # resolve_gpus has seen them
        return "GPU"
    if device == "auto":
        import torch

        return "GPU" if torch.cuda.is_available() else "CPU"
    return "GPU"


def server_compiles(detection: DetectionConfig) -> bool:
    """The python model's default: torch.compile on a GPU instance, where a long-lived server repays the minute
    it takes at start with a faster model step (docs/PERFORMANCE.md, figures behind choices); elsewhere the config's
    ``compile``."""
    return detection.compile or python_instance_kind(detection) == "GPU"


def python_model_config(detection: DetectionConfig):
    from reidctl.core.postprocess import DETECTION_COLUMNS

    config = _new_config(PYTHON_MODEL, detection.triton, python_instance_kind(detection))
    config.backend = "python"
    height, width = detection.input_size
    _add_tensors(config.input, [TensorSpec(PYTHON_INPUT, (height, width, 3), "UINT8")])
    rows = TensorSpec(PYTHON_OUTPUT, (-1, len(DETECTION_COLUMNS)), "FP32")  # per frame: N rows, zero-padded
    _add_tensors(config.output, [rows, TensorSpec(PYTHON_COUNT_OUTPUT, (1,), "INT32"),
                                 TensorSpec(PYTHON_SERVER_OUTPUT, (1,), "FP32")])
    for key, value in python_model_parameters(detection).items():
        config.parameters[key].string_value = value
    # Frames a client put in the GPU's memory reach the model there (it copies them to its own device either way).
    config.parameters[HOST_INPUTS_PARAMETER].string_value = "no"
    return config


def python_model_parameters(detection: DetectionConfig) -> dict[str, str]:
    """DetectionConfig fields as config.pbtxt string parameters.

    Paths become absolute: the server's working directory differs.
    """
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
        # JSON, as written: YAML 1.1 would read "5e-05" (a threshold of 0.00005) as a string
        values[name] = text if hints[name] in (str, str | None) else json.loads(text)
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


def check_replicas(triton, replicas: int) -> None:
    if replicas < 1:
        raise ReidctlError(f"--replicas: expected >= 1, got {replicas}")
    if replicas > 1 and triton.gpus not in (None, [0]):
        # Docker numbers a container's GPUs from 0: a group naming GPU 1 would not load in a one-GPU replica.
        raise ReidctlError(
            f"--replicas {replicas} gives each server one GPU, GPU 0 inside its container, but "
            f"{GPUS_KEY} names GPUs {gpus_text(triton.gpus)}: leave --gpus out"
        )
    ports = [port for replica in range(replicas) for port in replica_ports(triton, replica).values()]
    shared = sorted({port for port in ports if ports.count(port) > 1})
    if shared:
        raise ReidctlError(
            f"--replicas {replicas}: replicas would share host port {shared[0]} (replica i adds "
            f"i * {REPLICA_PORT_STEP} to each configured port): keep the HTTP, gRPC and metrics "
            f"ports within {REPLICA_PORT_STEP} of each other"
        )
    if max(ports) > 65535:
        raise ReidctlError(
            f"--replicas {replicas}: the last replica's port {max(ports)} exceeds 65535: choose lower ports"
        )


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
    replicas: int = 1,
) -> list[WrittenFile]:
    """Write both models and docker-compose.yml (``replicas`` servers, one GPU each, when more than one); a missing
    engine leaves model.plan out with one warning."""
    detection = placed_on_gpus(config.detection, visible_gpu_count)
    check_listen_address(detection.triton.listen)
    check_batching(detection.triton)
    check_replicas(detection.triton, replicas)
    if not PYTHON_MODEL_SOURCE.is_file():
        raise ReidctlError(
            f"the python model source is missing: {PYTHON_MODEL_SOURCE} (reinstall reidctl from its repository)"
        )
    repository = Path(repository)
    ensure_writable_dir(repository)
    from reidctl.export.tensorrt import read_sidecar, sidecar_path

    engine = Path(engine or detection.tensorrt.engine_path)
    sidecar = read_sidecar(engine)
    io = tensorrt_model_io(sidecar, sidecar_path(engine), detection.triton)
    if sidecar is not None and isinstance(sidecar.get("tensorrt_version"), str):
        mismatch = image_tensorrt_warning(sidecar["tensorrt_version"], image)
        if mismatch:
            warn(mismatch)
    written = []

    trt_dir = repository / TENSORRT_MODEL
    write_text_atomic(trt_dir / "config.pbtxt", render(tensorrt_model_config(detection, io)))
    written.append(WrittenFile(trt_dir / "config.pbtxt", f"TensorRT model config (I/O: {io.source})"))
    if engine.is_file():
        _copy_atomic(engine, trt_dir / "1" / "model.plan")
        written.append(WrittenFile(trt_dir / "1" / "model.plan", f"engine copied from {engine}"))
    else:
        ensure_writable_dir(trt_dir / "1")
        warn(
            f"warning: TensorRT engine {engine} not found: {TENSORRT_MODEL}/1/model.plan not written (rerun with "
            "--engine PATH)"
        )

    py_dir = repository / PYTHON_MODEL
    write_text_atomic(py_dir / "config.pbtxt", render(python_model_config(detection)))
    placement = f", {gpu_placement(detection.triton)}" if detection.triton.gpus is not None else ""
    written.append(WrittenFile(py_dir / "config.pbtxt", f"python-backend model config{placement}"))
    _copy_atomic(PYTHON_MODEL_SOURCE, py_dir / "1" / "model.py")
    written.append(WrittenFile(py_dir / "1" / "model.py", "python-backend model (reidctl PyTorch runner and NMS)"))

    compose = compose_file(detection.triton, repository, image, TENSORRT_MODEL, replicas)
    write_text_atomic(repository / "docker-compose.yml", compose)
    servers = f"{replicas} replicas of " if replicas > 1 else ""
    written.append(WrittenFile(repository / "docker-compose.yml", f"{servers}NGC container {image}"))
    written.append(WrittenFile(write_compose_key(repository), "the containers' key for their restricted APIs (0600)"))
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
