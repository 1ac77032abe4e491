"""Loader for ByteTrack/YOLOX checkpoints: reads, validates and infers the model layout."""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from reidctl.errors import ReidctlError
from reidctl.models.yolox import MODEL_SIZES, MODEL_TYPE_ALIASES, YOLOX, build_yolox

STEM_KEY = "backbone.backbone.stem.conv.conv.weight"
CLS_PRED_KEY = "head.cls_preds.0.weight"
DEFAULT_NUM_CLASSES = 1  # ByteTrack detects one class: person


@dataclass(frozen=True)
class ModelSpec:
    size: str
    num_classes: int

    @property
    def label(self) -> str:
        return f"YOLOX-{self.size} ({self.num_classes} class{'es' if self.num_classes != 1 else ''})"


def parse_model_type(model_type: str) -> tuple[str | None, int | None]:
    """'mot17' -> ('x', 1); 'yolox_s' or 's' -> ('s', None); 'auto' -> (None, None)."""
    name = model_type.lower().removeprefix("yolox_").removeprefix("yolox-")
    if name == "auto":
        return None, None
    if name in MODEL_TYPE_ALIASES:
        return MODEL_TYPE_ALIASES[name]
    if name in MODEL_SIZES:
        return name, None
    known = ", ".join(["auto", *MODEL_SIZES, *MODEL_TYPE_ALIASES])
    raise ReidctlError(f"unknown model_type '{model_type}' (known: {known})")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ByteTrack's ``{"model": state_dict, ...}`` file or a bare state dict."""
    path = Path(path)
    if path.is_dir():
        raise ReidctlError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise ReidctlError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint is data, never code to execute.
        with warnings.catch_warnings():  # its warning about a foreign pickle protocol would precede our error
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ReidctlError(f"checkpoint not readable: {path} ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001  torch.load fails on foreign bytes with many types (KeyError on text)
        # PyTorch's own text suggests weights_only=False: the wrong advice for a file that is not ours to trust.
        code = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if code:
            raise ReidctlError(f"{path} contains code objects ({code[1]}); refused for safety") from None
        raise ReidctlError(f"{path} is not a PyTorch checkpoint") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReidctlError(f"{path} holds no model state dict (expected {{'model': state_dict}} or a state dict)")
    return state


def infer_spec(state: dict[str, torch.Tensor], source: Path | str = "checkpoint") -> ModelSpec:
    """Size and class count from tensor shapes, so users need not say which YOLOX they bring."""
    if STEM_KEY not in state or CLS_PRED_KEY not in state:
        missing = STEM_KEY if STEM_KEY not in state else CLS_PRED_KEY
        raise ReidctlError(f"{source} is not a YOLOX checkpoint: key '{missing}' is missing")
    width = state[STEM_KEY].shape[0] / 64
    depth_blocks = len({k.split(".")[5] for k in state if k.startswith("backbone.backbone.dark2.1.m.")})
    depthwise = "backbone.backbone.dark2.0.dconv.conv.weight" in state
    for name, size in MODEL_SIZES.items():
        if (
            abs(size.width - width) < 1e-6
            and max(round(size.depth * 3), 1) == depth_blocks
            and size.depthwise == depthwise
        ):
            return ModelSpec(name, int(state[CLS_PRED_KEY].shape[0]))
    raise ReidctlError(f"{source} has a YOLOX layout of no known size (width {width}, depth {depth_blocks})")


def resolve_spec(model_type: str, num_classes: int | None, state: dict | None, source: Path | str) -> ModelSpec:
    """Reconcile model_type/num_classes with what the checkpoint holds; a disagreement is an error."""
    size, type_classes = parse_model_type(model_type)
    wanted_classes = num_classes if num_classes is not None else type_classes
    if state is None:
        return ModelSpec(size or "x", wanted_classes or DEFAULT_NUM_CLASSES)
    found = infer_spec(state, source)
    if size is not None and size != found.size:
        raise ReidctlError(f"{source} is {found.label}, but model_type '{model_type}' is YOLOX-{size}")
    if wanted_classes is not None and wanted_classes != found.num_classes:
        raise ReidctlError(f"{source} is {found.label}, but {wanted_classes} class(es) were expected ({model_type})")
    return found


def load_model(path: Path | None, model_type: str = "auto", num_classes: int | None = None) -> tuple[YOLOX, ModelSpec]:
    """Build YOLOX and load its weights strictly; without a path the weights stay untrained."""
    state = read_state_dict(path) if path is not None else None
    spec = resolve_spec(model_type, num_classes, state, path or "checkpoint")
    model = build_yolox(spec.size, spec.num_classes)
    if state is not None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}")
            raise ReidctlError(f"{path} does not match {spec.label}: {'; '.join(parts)}")
        wrong = [k for k, v in expected.items() if v.shape != state[k].shape]
        if wrong:
            raise ReidctlError(
                f"{path} does not match {spec.label}: '{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, "
                f"expected {tuple(expected[wrong[0]].shape)}"
            )
        model.load_state_dict(state, strict=True)
    return model.eval(), spec


def save_checkpoint(model: YOLOX, path: Path) -> None:
    """Write a checkpoint in ByteTrack's layout (used by tests and for fused/converted weights)."""
    from reidctl.io.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        torch.save({"model": model.state_dict()}, tmp)
