"""TensorRT engines: version detection, ONNX -> serialized engine, the JSON sidecar and the compatibility check.

Written to NVIDIA's documented APIs of TensorRT 10 (``BuilderFlag.FP16`` for fp16 from an fp32 graph) and
TensorRT 11 (strongly typed only: an fp16 engine needs an fp16 ONNX graph). An engine only runs on the GPU
architecture and TensorRT version that built it, so both are recorded beside it in ``<engine>.json``.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from reidctl import __version__
from reidctl.core.device import TORCH_DTYPES, gpu_description
from reidctl.errors import BackendUnavailable, ReidctlError, first_line
from reidctl.export.onnx import OnnxInfo, file_sha256, read_onnx
from reidctl.io.atomic import atomic_path, ensure_writable_dir

TENSORRT_INSTALL_HINT = (
    "TensorRT is not installed (pip install 'reidctl[tensorrt]' on a machine with an NVIDIA GPU; see docs)"
)
NO_GPU_REASON = "no CUDA GPU is visible here (TensorRT builds and runs engines on an NVIDIA GPU)"
REBUILD_HINT = "rebuild the engine on this GPU (reidctl build-engine)"
SIDECAR_FORMAT = 1
TENSORRT_TYPE_NAMES = {"FLOAT": "FP32", "HALF": "FP16"}  # TensorRT's names where they differ from TORCH_DTYPES'


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(TENSORRT_INSTALL_HINT) from None
    except OSError as exc:  # the wheel is there but its CUDA libraries are not
        raise BackendUnavailable(f"TensorRT is installed but cannot load: {first_line(exc)}") from None
    return tensorrt


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT imports and a CUDA GPU is present, else why not (one line)."""
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    if not torch.cuda.is_available():
        return NO_GPU_REASON
    return None


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def torch_dtype(trt_dtype) -> torch.dtype:
    """tensorrt.DataType -> torch dtype (by enum name, which is stable across TensorRT 10 and 11)."""
    try:
        return TORCH_DTYPES[TENSORRT_TYPE_NAMES.get(trt_dtype.name, trt_dtype.name)]
    except KeyError:
        raise ReidctlError(f"TensorRT tensor type {trt_dtype.name} is not supported") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class BuildPlan:
    precision: str  # fp32 | fp16
    fp16_flag: bool  # TensorRT 10's weakly typed BuilderFlag.FP16
    strongly_typed: bool


def plan_precision(tensorrt_major: int, want_fp16: bool, onnx_precision: str) -> BuildPlan:
    """How to get the asked precision from this ONNX on this TensorRT."""
    if onnx_precision == "fp16":
        # The graph's types decide: build strongly typed so TensorRT keeps them.
        return BuildPlan("fp16", fp16_flag=False, strongly_typed=True)
    if not want_fp16:
        return BuildPlan("fp32", fp16_flag=False, strongly_typed=tensorrt_major >= 11)
    if tensorrt_major >= 11:
        raise ReidctlError(
            "TensorRT 11 builds fp16 engines only from fp16 graphs and this ONNX is fp32: "
            "export with `reidctl export-onnx --fp16` (or build an fp32 engine with --fp32)"
        )
    return BuildPlan("fp16", fp16_flag=True, strongly_typed=False)


def batch_profile(onnx_batch: int | None, min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """The optimization profile's batch sizes: fixed for a fixed-batch graph, else the asked range."""
    if onnx_batch is not None:
        return onnx_batch, onnx_batch, onnx_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ReidctlError(
            f"batch profile must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})"
        )
    return min_batch, opt_batch, max_batch


def sidecar_path(engine_path: Path) -> Path:
    return Path(f"{engine_path}.json")


def make_sidecar(
    *,
    tensorrt_version: str,
    gpu: dict,
    inputs: list[dict],
    outputs: list[dict],
    profile: tuple[int, int, int],
    precision: str,
    onnx: OnnxInfo,
    onnx_sha256: str,
    workspace_mib: int,
) -> dict:
    """The JSON written beside an engine. ``inputs``/``outputs``: [{name, shape, dtype}], -1 for dynamic dims."""
    return {
        "format": SIDECAR_FORMAT,
        "reidctl_version": __version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "inputs": inputs,
        "outputs": outputs,
        "profile": {"min_batch": profile[0], "opt_batch": profile[1], "max_batch": profile[2]},
        "precision": precision,
        "workspace_mib": workspace_mib,
        "onnx": {"path": str(onnx.path), "sha256": onnx_sha256, "opset": onnx.opset},
        "metadata": onnx.metadata.as_dict() if onnx.metadata else None,
    }


def read_sidecar(engine_path: Path) -> dict | None:
    """The engine's sidecar, or None if there is none."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReidctlError(f"{path} is not valid JSON: rebuild the engine (reidctl build-engine)") from None
    if not isinstance(data, dict):
        raise ReidctlError(f"{path} is not an engine sidecar: rebuild the engine (reidctl build-engine)")
    return data


def current_platform(tensorrt_version: str, device: torch.device) -> dict:
    """What an engine must match here: TensorRT version and the GPU (name, compute capability)."""
    return {"tensorrt_version": tensorrt_version, "gpu": gpu_description(device)}


def check_engine_compatibility(sidecar: dict, current: dict, engine_path: Path | str) -> None:
    """Raise unless the engine was built by this TensorRT version on this GPU model. ``current`` is
    ``current_platform(...)``. NVIDIA ties an engine to the exact GPU model it was built on (TensorRT itself only
    warns for another model of the same compute capability), so another model is refused like another architecture."""
    try:
        built_version = sidecar["tensorrt_version"]
        built_gpu = sidecar["gpu"]["name"]
        built_cc = sidecar["gpu"]["compute_capability"]
    except (KeyError, TypeError):
        sidecar_file = sidecar_path(Path(engine_path))
        raise ReidctlError(f"{sidecar_file} lacks the TensorRT version or GPU: {REBUILD_HINT}") from None
    gpu = current["gpu"]
    if built_version != current["tensorrt_version"]:
        raise ReidctlError(
            f"{engine_path} was built with TensorRT {built_version}, this machine has TensorRT "
            f"{current['tensorrt_version']}: {REBUILD_HINT}"
        )
    if built_cc != gpu["compute_capability"] or built_gpu != gpu["name"]:
        raise ReidctlError(
            f"{engine_path} was built for {built_gpu} (compute capability {built_cc}), this GPU is {gpu['name']} "
            f"(compute capability {gpu['compute_capability']}): {REBUILD_HINT}"
        )


class TensorRTLog:
    """What reidctl keeps of TensorRT's log: errors, for the one-line message of a failed call; each distinct warning,
    passed once to ``warn``; VERBOSE and INFO are dropped first thing (TensorRT calls the logger for every message)."""

    DROPPED = frozenset({"VERBOSE", "INFO"})

    def __init__(self, warn: Callable[[str], None]):
        self.warn = warn
        self.errors: list[str] = []
        self._warned: set[str] = set()

    def add(self, severity: str, message: str) -> None:
        """``severity``: the name of TensorRT's ``ILogger.Severity`` (INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE)."""
        if severity in self.DROPPED:
            return
        line = first_line(str(message))
        if severity == "WARNING":
            if line and line not in self._warned:
                self._warned.add(line)
                self.warn(f"warning: TensorRT: {line}")
            return
        self.errors.append(line or "unknown error")

    def last_error(self) -> str:
        return self.errors[-1] if self.errors else "no error message from TensorRT"


def collecting_logger(trt, warn: Callable[[str], None]):
    """A tensorrt.ILogger that feeds a TensorRTLog (``.last_error()`` for one-line failures)."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.record = TensorRTLog(warn)

        def log(self, severity, msg):
            self.record.add(severity.name, msg)

        def last_error(self) -> str:
            return self.record.last_error()

    return CollectingLogger()


def read_timing_cache(path: Path) -> tuple[bytes, str | None]:
    """The bytes to seed the builder's timing cache with (empty: start a fresh one), and a warning when ``path``
    exists but cannot be read."""
    if not path.exists():
        return b"", None
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return b"", fresh_timing_cache_warning(path, exc.strerror or first_line(exc))


def fresh_timing_cache_warning(path: Path, reason: str) -> str:
    return (f"warning: timing cache {path} cannot be used ({reason}); building with a fresh cache, "
            "which replaces it afterwards")


def attach_timing_cache(config, path: Path, warn: Callable[[str], None]) -> None:
    """Give the builder ``path``'s timing cache, or a fresh one when it cannot be read or TensorRT will not take it
    (another TensorRT version or GPU: TensorRT refuses a mismatched cache unless told to ignore the mismatch, and
    NVIDIA warns that mixing devices' timings can give wrong or slow engines)."""
    data, warning = read_timing_cache(path)
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return
        warning = fresh_timing_cache_warning(path, "written by another TensorRT version or GPU, or damaged")
    if warning:
        warn(warning)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        warn("warning: TensorRT did not accept an empty timing cache; building without one")


def save_timing_cache(config, path: Path, warn: Callable[[str], None]) -> None:
    """Write the builder's timing cache to ``path``, merged with what ``path`` holds now (another build may have
    added to it meanwhile; TensorRT merges only timings of this version and GPU). A failure here is a warning: the
    engine is already written."""
    cache = config.get_timing_cache()
    if cache is None:
        warn(f"warning: TensorRT returned no timing cache: {path} not updated")
        return
    data, _ = read_timing_cache(path)
    previous = config.create_timing_cache(data) if data else None
    if previous is not None:
        cache.combine(previous, False)
    serialized = cache.serialize()
    if serialized is None:
        warn(f"warning: TensorRT could not serialize the timing cache: {path} not updated")
        return
    try:
        with atomic_path(path) as cache_tmp:
            cache_tmp.write_bytes(bytes(serialized))
    except (OSError, ReidctlError) as exc:
        warn(f"warning: timing cache {path} not updated: {first_line(exc)}")


@dataclass(frozen=True)
class BuildProgress:
    """Where an engine build is: ``phase``, the build itself (``parent`` None) or one of TensorRT's phases within
    ``parent``, has ``done`` of ``total`` steps done (``total`` None: unknown); ``ended`` once it is over."""

    phase: str
    parent: str | None
    done: int
    total: int | None
    ended: bool = False


def _progress_monitor(trt, build: str, on_progress: Callable[[BuildProgress], None]):
    """TensorRT's build phases, within the phase ``build``, told to ``on_progress`` (from TensorRT's own threads)."""

    class PhaseMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, tuple[str, int]] = {}  # parent and steps of each phase under way

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.phases[phase_name] = (parent_phase or build, num_steps)
            on_progress(BuildProgress(phase_name, parent_phase or build, 0, num_steps))

        def step_complete(self, phase_name, step):
            if phase_name in self.phases:
                parent, steps = self.phases[phase_name]
                on_progress(BuildProgress(phase_name, parent, step + 1, steps))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            if phase_name in self.phases:
                parent, steps = self.phases.pop(phase_name)
                on_progress(BuildProgress(phase_name, parent, steps, steps, ended=True))

    return PhaseMonitor()


def _io_tensors(count: int, get) -> list[dict]:
    return [
        {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": dtype_name(torch_dtype(t.dtype))}
        for t in (get(i) for i in range(count))
    ]


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    size_bytes: int
    sidecar: dict
    seconds: float

    def as_dict(self) -> dict:
        return {"engine": str(self.engine_path), "size_bytes": self.size_bytes, "seconds": self.seconds,
                "sidecar": self.sidecar}


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    fp16: bool,
    workspace_mib: int,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    timing_cache: Path | None = None,
    on_progress: Callable[[BuildProgress], None] | None = None,
    warn: Callable[[str], None] = print,
) -> BuildResult:
    """Build ``engine_path`` (and its sidecar) from ``onnx_path``; nothing is written if any step fails.

    ``on_progress`` hears the build as a phase named after TensorRT's version and the precision, and TensorRT's own
    phases within it.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = read_onnx(onnx_path)
    if info.metadata is None:
        warn(f"warning: {onnx_path} has no reidctl metadata: the engine's sidecar will lack model type, classes and "
             "decode mode (the TensorRT backend then uses detection.decoded)")
    if workspace_mib < 1:
        raise ReidctlError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    profile = batch_profile(info.batch, min_batch, opt_batch, max_batch)
    ensure_writable_dir(engine_path.parent)  # fail before a build that can take minutes
    if timing_cache:
        ensure_writable_dir(timing_cache.parent)
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise BackendUnavailable(NO_GPU_REASON)
    plan = plan_precision(major_version(trt.__version__), fp16, info.precision)
    device = torch.device("cuda", torch.cuda.current_device())
    started = time.perf_counter()

    logger = collecting_logger(trt, warn)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.strongly_typed and strongly_typed_flag is not None:  # TensorRT 11 is strongly typed without the flag
        flags |= 1 << int(strongly_typed_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise ReidctlError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else logger.last_error()}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if info.batch is None:
        optimization_profile = builder.create_optimization_profile()
        height, width = info.input_size
        optimization_profile.set_shape(info.input_name, *[(b, 3, height, width) for b in profile])
        config.add_optimization_profile(optimization_profile)
    if timing_cache:
        attach_timing_cache(config, timing_cache, warn)

    build = f"TensorRT {trt.__version__}, {plan.precision}"
    if on_progress:
        on_progress(BuildProgress(build, None, 0, None))
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(trt, build, on_progress)
    serialized = builder.build_serialized_network(network, config)
    if on_progress:
        on_progress(BuildProgress(build, None, 1, 1, ended=True))
    if serialized is None:
        raise ReidctlError(f"TensorRT could not build the engine: {logger.last_error()} "
                           f"(workspace {workspace_mib} MiB; a larger --workspace may help)")

    sidecar = make_sidecar(
        tensorrt_version=trt.__version__,
        gpu=gpu_description(device),
        inputs=_io_tensors(network.num_inputs, network.get_input),
        outputs=_io_tensors(network.num_outputs, network.get_output),
        profile=profile,
        precision=plan.precision,
        onnx=info,
        onnx_sha256=file_sha256(onnx_path),
        workspace_mib=workspace_mib,
    )
    with atomic_path(engine_path) as engine_tmp, atomic_path(sidecar_path(engine_path)) as sidecar_tmp:
        with open(engine_tmp, "wb") as f:
            f.write(serialized)
        sidecar_tmp.write_text(json.dumps(sidecar, indent=2))
    if timing_cache:
        save_timing_cache(config, timing_cache, warn)
    return BuildResult(engine_path, engine_path.stat().st_size, sidecar, time.perf_counter() - started)
