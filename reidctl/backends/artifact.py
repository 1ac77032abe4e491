"""What the ONNX Runtime and TensorRT runners share: reading an artifact's contract and batching to its limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from reidctl.errors import ReidctlError
from reidctl.export.onnx import OnnxMetadata


def artifact_decoded(metadata: OnnxMetadata | None, detection, source: Path, warn: Callable[[str], None]) -> bool:
    """Whether the artifact's output is decoded: from its metadata; without metadata from
    ``detection.tensorrt.decoded``, else assumed raw, as ByteTrack's own export is (one warning line)."""
    configured = detection.tensorrt.decoded
    if metadata is not None:
        if configured is not None and configured != metadata.decoded:
            warn(f"warning: detection.tensorrt.decoded is {str(configured).lower()} but {source} was exported with "
                 f"decoded={str(metadata.decoded).lower()}; using the file's metadata")
        return metadata.decoded
    decoded = bool(configured)
    warn(f"warning: {source} has no reidctl metadata: input size and precision taken from the graph, outputs assumed "
         f"{'decoded' if decoded else 'raw as in ByteTrack exports'} (detection.tensorrt.decoded)")
    return decoded


def check_input_size(artifact_size: tuple[int, int], detection, source: Path) -> None:
    """The Detector letterboxes to detection.test_size; an artifact built for another size cannot take that."""
    height, width = artifact_size
    if tuple(artifact_size) != detection.input_size:
        configured = "x".join(str(s) for s in detection.input_size)
        raise ReidctlError(f"{source} takes {height}x{width} input but detection.test_size is {configured}: "
                           f"pass --test-size {height}x{width} or set detection.test_size: [{height}, {width}]")


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
