"""The backend registry: each backend's record, by which create_detector and the apps treat it.

The one module that imports by name (tests/test_layers.py): it reaches the backends, a higher layer, that way.
"""

from __future__ import annotations

import enum
import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from reidctl.errors import ReidctlError


class Artifact(enum.Enum):
    """What a backend runs, and so what deploying it prepares (apps/deploy.py)."""

    CHECKPOINT = "checkpoint"  # the checkpoint itself, in the model's own code: nothing to prepare
    ONNX = "onnx"  # the ONNX export (`reidctl export-onnx`)
    ENGINE = "engine"  # a TensorRT engine built from the ONNX export for a batch profile (`reidctl build-engine`)
    SERVER_MODEL = "server model"  # a model that a Triton server serves and batches (`reidctl setup-triton`)


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Backend:
    """A registered backend: how to check it can run here, how to build its runner from the config, and the facts
    by which recommend, parity, bench and deploy treat it (they name no backend)."""

    name: str
    description: str
    availability: Callable[[], str | None]  # None when usable, else why not
    make_runner: Callable[..., object]  # (config, warn) -> a Runner, unnamed here: reidctl.core.detector imports this
    simplicity: int  # its place among the backends, simplest to set up and run first: recommend prefers the simplest
    artifact: Artifact
    config_keys: tuple[str, ...] = ()  # its detection keys outside any section: what its config snippet carries
    config_section: str | None = None  # the detection section that describes its artifact
    precision_from_config: bool = False  # detection.fp16 sets its precision (else its artifact does)
    # True where it runs here, but not on a GPU (ONNX Runtime without its CUDA provider): parity runs it on the CPU
    cpu_only_here: Callable[[], bool] = _never
    packages: tuple[str, ...] = ()  # the distributions it may come from; the first names it in a bench file
    # (config, warn) -> an object with detect(frame) and close() that imports no torch, or None where the backend
    # needs it: what client processes that only send frames to a server run (apps/clients.py)
    frame_sender: Callable[..., object | None] | None = None


# The built-in backends are the modules of reidctl.backends, each named after the backend it registers (helper
# modules register none). A module is imported when its backend is asked for, so using one backend never pays for the
# others' imports, and this module imports no backend.
BACKENDS_PACKAGE = "reidctl.backends"
BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


@functools.cache
def _backend_modules() -> tuple[str, ...]:
    package = importlib.util.find_spec(BACKENDS_PACKAGE)
    return tuple(module.name for module in pkgutil.iter_modules(package.submodule_search_locations))


def get_backend(name: str) -> Backend:
    if name not in BACKENDS and name in _backend_modules():
        importlib.import_module(f"{BACKENDS_PACKAGE}.{name}")
    if name not in BACKENDS:
        raise ReidctlError(f"unknown backend '{name}' (known: {', '.join(registered_backends())})")
    return BACKENDS[name]


def registered_backends() -> dict[str, Backend]:
    """Every backend by name, simplest first (each built-in backend's module imported)."""
    for module in _backend_modules():
        importlib.import_module(f"{BACKENDS_PACKAGE}.{module}")
    return dict(sorted(BACKENDS.items(), key=lambda item: (item[1].simplicity, item[0])))


def available_backends() -> dict[str, str | None]:
    """Every backend name, simplest first -> None if it can run here, else the reason it cannot."""
    return {name: backend.availability() for name, backend in registered_backends().items()}


# What every other backend and precision is compared with (bench --parity, recommend).
REFERENCE_PRECISION = "fp32"


def reference_backend() -> str:
    """The simplest backend that runs the checkpoint itself, in the model's own code: in fp32 it is the reference."""
    return next(name for name, backend in registered_backends().items() if backend.artifact is Artifact.CHECKPOINT)
