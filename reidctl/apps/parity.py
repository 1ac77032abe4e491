"""Accuracy parity: the same frames through every backend and precision, against PyTorch fp32.

A box of a backend matches a reference box of the same class at IoU >= MATCH_IOU (greedy, highest IoU first).
Only boxes scoring at least COUNTED_SCORE are counted as missed or extra, but they may match a box of any score:
a box that scores 0.101 in one backend and 0.099 in the other is a score difference, not a missed box.
A backend is flagged when its missed + extra boxes exceed ``tolerance`` of the reference's boxes or a matched
box's score moves by more than ``score_tolerance``; a flagged backend is never recommended.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from reidctl.config import Config, override
from reidctl.apps.bench_report import ParityResult
from reidctl.core.detector import create_detector
from reidctl.core.registry import REFERENCE_PRECISION, get_backend, reference_backend
from reidctl.core.device import ONNXRUNTIME_CUDA_PROVIDER, resolve_device
from reidctl.errors import BackendUnavailable, describe_error, first_line

MATCH_IOU = 0.9
COUNTED_SCORE = 0.1  # ByteTrack's low score threshold: boxes below it are never used by the tracker


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4+) with every box of ``b`` (M, 4+), x1 y1 x2 y2."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:4] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:4] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def scores(detections: np.ndarray) -> np.ndarray:
    return detections[:, 4] * detections[:, 5]


@dataclasses.dataclass
class FrameComparison:
    reference_boxes: int
    matched: int
    missed: int
    extra: int
    score_diffs: list[float]


def compare_frame(reference: np.ndarray, candidate: np.ndarray) -> FrameComparison:
    """One frame's (N, 7) detections against the reference's."""
    ref_scores, cand_scores = scores(reference), scores(candidate)
    iou = (
        iou_matrix(reference, candidate)
        if len(reference) and len(candidate)
        else np.zeros((len(reference), len(candidate)))
    )
    iou[reference[:, 6, None] != candidate[None, :, 6]] = 0.0  # a match keeps its class
    ref_free, cand_free = np.ones(len(reference), bool), np.ones(len(candidate), bool)
    pairs = []
    rows, columns = np.nonzero(iou >= MATCH_IOU)
    for k in np.argsort(-iou[rows, columns], kind="stable"):
        i, j = rows[k], columns[k]
        if ref_free[i] and cand_free[j]:
            ref_free[i] = cand_free[j] = False
            pairs.append((i, j))
    counted = [(i, j) for i, j in pairs if max(ref_scores[i], cand_scores[j]) >= COUNTED_SCORE]
    return FrameComparison(
        reference_boxes=int((ref_scores >= COUNTED_SCORE).sum()),
        matched=len(counted),
        missed=int((ref_free & (ref_scores >= COUNTED_SCORE)).sum()),
        extra=int((cand_free & (cand_scores >= COUNTED_SCORE)).sum()),
        score_diffs=[float(abs(ref_scores[i] - cand_scores[j])) for i, j in counted],
    )


def compare(
    backend: str,
    precision: str | None,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    tolerance: float,
    score_tolerance: float,
) -> ParityResult:
    frames = [compare_frame(r, c) for r, c in zip(reference, candidate)]
    diffs = [d for f in frames for d in f.score_diffs]
    result = ParityResult(
        backend,
        precision,
        "ok",
        frames=len(frames),
        reference_boxes=sum(f.reference_boxes for f in frames),
        matched=sum(f.matched for f in frames),
        missed=sum(f.missed for f in frames),
        extra=sum(f.extra for f in frames),
        max_score_diff=max(diffs) if diffs else None,
    )
    result.flagged = result.mismatch_rate > tolerance or (result.max_score_diff or 0.0) > score_tolerance
    return result


def variants(config: Config, backends: Sequence[str]) -> list[tuple[str, str | None, Config]]:
    """(backend, precision, config) to compare: a backend whose precision the config sets (PyTorch) in fp16 where
    it runs in fp16 (a GPU; fp32 is the reference's), every other backend as configured (its artifact decides its
    precision). One that runs here but not on the GPU (ONNX Runtime without its CUDA provider) runs its artifact on
    the CPU: the same graph and weights, and the table says where it ran."""
    on_gpu = resolve_device(config.detection.device).type == "cuda"
    found = []
    for name in backends:
        backend = get_backend(name)
        if backend.precision_from_config:
            if on_gpu:
                found.append((name, "fp16", override(config, fp16=True)))
        elif on_gpu and backend.cpu_only_here():
            found.append((name, None, override(config, device="cpu")))
        else:
            found.append((name, None, config))
    return found


def _runs_on(describe: dict) -> str | None:
    """Where a runner computed: ONNX Runtime's first provider, a server model's device, else the runner's device."""
    if describe.get("providers"):
        first = describe["providers"][0]
        return {ONNXRUNTIME_CUDA_PROVIDER: "cuda", "CPUExecutionProvider": "cpu"}.get(first, first)
    server = describe.get("server_model") or {}
    return f"server {server['device']}" if "device" in server else describe.get("device")


def _precision(describe: dict) -> str | None:
    if "precision" in describe:
        return describe["precision"]
    server = describe.get("server_model") or {}  # a Triton model says how it runs in its parameters
    return ("fp16" if server["fp16"] in (True, "true", "True") else "fp32") if "fp16" in server else None


def detect_all(
    config: Config, backend: str, frames: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], str | None, str | None]:
    """Every frame's detections, the precision and where they were computed."""
    with create_detector(config, backend) as detector:
        described = detector.runner.describe()
        return [detector.detect(frame) for frame in frames], _precision(described), _runs_on(described)


@contextlib.contextmanager
def full_fp32():
    """No TF32 in convolutions and matrix products for the block: PyTorch's cuDNN convolutions use TF32 on Ampere
    and newer GPUs by default, and the reference must be the model's fp32 arithmetic."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_parity(
    config: Config, backends: Sequence[str], frames: Sequence[np.ndarray], tolerance: float, score_tolerance: float
) -> list[ParityResult]:
    """The reference (PyTorch fp32 on the configured device), then every other backend and precision."""
    reference_name = reference_backend()
    with full_fp32():
        reference, _, reference_device = detect_all(override(config, fp16=False), reference_name, frames)
    results = [
        ParityResult(
            reference_name,
            REFERENCE_PRECISION,
            "reference",
            frames=len(frames),
            reference_boxes=int(sum((scores(r) >= COUNTED_SCORE).sum() for r in reference)),
            runs_on=reference_device,
        )
    ]
    for name, precision, variant_config in variants(config, backends):
        reason = get_backend(name).availability()
        if reason:
            results.append(ParityResult(name, precision, "unavailable", reason))
            continue
        try:
            detections, described, runs_on = detect_all(variant_config, name, frames)
        except BackendUnavailable as exc:
            results.append(ParityResult(name, precision, "unavailable", str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001  one backend's failure must not cost the others' results
            results.append(ParityResult(name, precision, "failed", first_line(describe_error(exc))))
            continue
        result = compare(name, precision or described, reference, detections, tolerance, score_tolerance)
        result.runs_on = runs_on
        results.append(result)
    return results
