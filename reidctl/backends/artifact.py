"""What the ONNX Runtime and TensorRT runners share: reading an artifact's decode mode and batching to its limits
(the input size it takes, every backend's, is checked by create_detector: reidctl/core/artifact_checks.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reidctl.export.onnx import OnnxMetadata


def artifact_decoded(metadata: OnnxMetadata | None, detection, source: Path, warn: Callable[[str], None]) -> bool:
    """Whether the artifact's output is decoded: from its metadata; without metadata from
    ``detection.decoded``, else assumed raw, as ByteTrack's own export is (one warning line)."""
    configured = detection.decoded
    if metadata is not None:
        if configured is not None and configured != metadata.decoded:
            warn(f"warning: detection.decoded is {str(configured).lower()} but {source} was exported with "
                 f"decoded={str(metadata.decoded).lower()}; using the file's metadata")
        return metadata.decoded
    decoded = bool(configured)
    warn(f"warning: {source} has no reidctl metadata: input size and precision taken from the graph, outputs assumed "
         f"{'decoded' if decoded else 'raw as in ByteTrack exports'} (detection.decoded)")
    return decoded


def infer_in_batches(
    batch: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], min_batch: int = 1, max_batch: int | None = None
) -> torch.Tensor:
    """``run`` on slices of at most ``max_batch`` frames, each padded up to ``min_batch`` (a fixed-batch artifact
    has min = max); the padding rows are dropped from the result. ``run`` must return a tensor it does not reuse."""
    step = max_batch or len(batch)
    outputs = []
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        rows = len(chunk)
        if rows < min_batch:
            chunk = torch.cat([chunk, chunk.new_zeros((min_batch - rows, *chunk.shape[1:]))])
        outputs.append(run(chunk)[:rows])
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
