"""Time select_detections on the GPU: reidctl's NMS kernels (Triton language) against torchvision's batched_nms,
same inputs.

Decoded YOLOX predictions for 640x640 frames (8,400 anchors, one class) at three detection loads:
  idle   no anchor reaches conf_threshold;
  crowd  about 1,500 candidates per frame clustered around 60 people (NMS removes most of them);
  worst  every anchor is a candidate and NMS keeps nearly all (tiny boxes at the anchor points).
Each case is timed with CUDA events (median and p90 of --iters runs after --warmup), and the two methods'
kept rows must be equal. With --model-ms, each run first queues a GPU stand-in for the model of that many ms, as
the Detector does, and the time it adds beyond the stand-in alone is reported: there the host queues the NMS
kernels while the model runs. With --counts-first, the host also waits for each frame's candidate count before it
queues the NMS (what select_detections avoids: it keeps the counts on the device until the rows come back), so the
time that wait adds shows against a run without it.
Usage: PYTHONPATH=$PWD python scripts/nms_bench.py [--batches 1,8] [--iters 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from reidctl.core.postprocess import NMS_METHODS, select_detections
from reidctl.io.atomic import atomic_path
from reidctl.models.yolox import anchor_grids

INPUT_SIZE = (640, 640)
CONF_THRESHOLD = 0.01
NMS_THRESHOLD = 0.7


def synthetic_predictions(load: str, batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Decoded (batch, 8400, 6) predictions: cx, cy, w, h, obj, cls with distinct scores."""
    generator = torch.Generator().manual_seed(seed)
    grids, strides = anchor_grids(INPUT_SIZE, torch.float32, torch.device("cpu"))
    anchors = grids.shape[1]
    centres = ((grids + 0.5) * strides).expand(batch, -1, -1).clone()
    obj = torch.rand(batch, anchors, 1, generator=generator) * 0.5 + 0.4
    cls = torch.rand(batch, anchors, 1, generator=generator) * 0.5 + 0.4
    if load == "idle":
        sizes = strides.expand(batch, -1, 2) * 2
        obj = obj * 0.01  # scores below 0.01
    elif load == "worst":
        sizes = strides.expand(batch, -1, 2) * 0.02  # boxes far smaller than the anchor spacing: no overlaps
    elif load == "crowd":
        people = torch.rand(batch, 60, 2, generator=generator) * torch.tensor(INPUT_SIZE[::-1])
        person = torch.randint(0, 60, (batch, anchors), generator=generator)
        centres = torch.gather(people, 1, person[..., None].expand(-1, -1, 2))
        centres += torch.randn(batch, anchors, 2, generator=generator) * 3
        sizes = torch.tensor([40.0, 100.0]) * (1 + 0.1 * torch.randn(batch, anchors, 2, generator=generator))
        candidate = torch.rand(batch, anchors, 1, generator=generator) < 1500 / anchors
        obj = torch.where(candidate, obj, obj * 0.01)
    else:
        raise ValueError(load)
    return torch.cat([centres, sizes, obj, cls], dim=-1).to(device)


def time_ms(
    predictions: torch.Tensor | None, method: str, warmup: int, iters: int, model_cycles: int = 0,
    counts_first: bool = False,
) -> list[float]:
    """Milliseconds per run of [model stand-in, then] select_detections; None: the stand-in alone. ``counts_first``:
    the host waits for the frames' candidate counts before it queues select_detections."""
    times = []
    for run in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if model_cycles:
            torch.cuda._sleep(model_cycles)
        if predictions is not None and counts_first:
            scores = predictions[..., 4] * predictions[..., 5:].max(dim=-1).values
            (scores >= CONF_THRESHOLD).sum(dim=1).tolist()  # the host waits here, for the model too
        if predictions is not None:
            select_detections(predictions, CONF_THRESHOLD, NMS_THRESHOLD, method)  # ends with a host sync
        end.record()
        end.synchronize()
        if run >= warmup:
            times.append(start.elapsed_time(end))
    return times


def sleep_cycles(ms: float) -> int:
    """GPU clock cycles that torch.cuda._sleep spins for about ``ms`` milliseconds."""
    probe = 10**7
    elapsed = float(np.median(time_ms(None, "", 3, 10, probe)))
    return int(probe * ms / elapsed)


def same_rows(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x[np.lexsort(x.T)], y[np.lexsort(y.T)]) for x, y in zip(a, b, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--loads", default="idle,crowd,worst", help="comma-separated loads")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--model-ms", type=float, default=0.0, help="GPU stand-in for the model before each run")
    parser.add_argument("--counts-first", action="store_true",
                        help="the host waits for the candidate counts before queueing each run's NMS")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: nms_bench needs a CUDA GPU", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    results, mismatches = [], 0
    cycles = sleep_cycles(args.model_ms) if args.model_ms else 0
    model_alone = float(np.median(time_ms(None, "", args.warmup, args.iters, cycles))) if cycles else 0.0
    print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", end="")
    print(f", after a {model_alone:.2f} ms model stand-in (times are what NMS adds)" if cycles else "",
          ", waiting for the candidate counts first" if args.counts_first else "", sep="")
    for load in args.loads.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            predictions = synthetic_predictions(load, batch, device)
            outputs = {m: select_detections(predictions, CONF_THRESHOLD, NMS_THRESHOLD, m) for m in NMS_METHODS}
            reference = outputs["torchvision"]
            equal = same_rows(outputs["kernels"].rows, reference.rows)
            equal &= outputs["kernels"].candidates == reference.candidates
            mismatches += not equal
            row = {
                "load": load,
                "batch": batch,
                "candidates_per_frame": float(np.mean(reference.candidates)),
                "kept_per_frame": float(np.mean(reference.kept)),
                "equal": equal,
            }
            for method in NMS_METHODS:
                times = np.array(time_ms(predictions, method, args.warmup, args.iters, cycles,
                                         args.counts_first)) - model_alone
                row[f"{method}_p50_ms"] = float(np.median(times))
                row[f"{method}_p90_ms"] = float(np.percentile(times, 90))
            results.append(row)
            print(
                f"{load:>5} b={batch:<2} candidates/frame {row['candidates_per_frame']:7.1f} "
                f"kept/frame {row['kept_per_frame']:7.1f}  torchvision p50 {row['torchvision_p50_ms']:7.3f} ms "
                f"p90 {row['torchvision_p90_ms']:7.3f}  kernels p50 {row['kernels_p50_ms']:7.3f} ms "
                f"p90 {row['kernels_p90_ms']:7.3f}  equal={equal}"
            )
    if args.json:
        with atomic_path(args.json) as tmp:
            summary = {"gpu": torch.cuda.get_device_name(device), "model_ms": model_alone,
                       "counts_first": args.counts_first, "results": results}
            tmp.write_text(json.dumps(summary, indent=2))
    if mismatches:
        print(f"error: {mismatches} case(s) kept different rows", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
