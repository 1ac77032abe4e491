"""Write ByteTrack-format checkpoints that put three detection loads on NMS, for benchmarks.

  idle   YOLOX's initialisation as built: almost no anchor reaches conf_threshold;
  crowd  an untrained YOLOX whose activations stay alive (reidctl.models.untrained; plain initialisation gives every
         anchor the same score), its objectness and class biases calibrated on the project's synthetic frames so
         that about --crowd candidates per frame reach conf_threshold, about --people of them on the coarsest level
         (the largest boxes) as people a tracker follows (>= --person-score, ByteTrack's track_thresh 0.5 + 0.1
         to start a track); boxes of ~8 strides, so neighbouring candidates overlap and NMS has work to
         do (boxes fixed at their anchors: the same boxes on any frame);
  worst  objectness and class biases -1.0 (sigmoid(-1)^2 = 0.072 >= 0.01, with the weights' spread checked on the
         frames) so every anchor is a candidate, and the width/height regression bias -6 (boxes of ~0.02 stride)
         so that the boxes do not overlap and NMS keeps nearly all.

Prints the candidates, kept detections and kept people per frame measured with each written checkpoint.
Usage: PYTHONPATH=$PWD python scripts/make_load_checkpoints.py --output-dir models/loads [--model-type mot17] \\
         [--size 640 640]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from reidctl.apps.bench import SYNTHETIC_FRAMES
from reidctl.core.postprocess import select_detections
from reidctl.core.preprocess import letterbox, normalize, sample_input
from reidctl.errors import ReidctlError
from reidctl.io.synthetic import synthetic_frame
from reidctl.models.checkpoint import load_model, resolve_spec, save_checkpoint
from reidctl.core.untrained import lively_yolox
from reidctl.models.yolox import YOLOX, build_yolox

LOADS = ("idle", "crowd", "worst")
WORST_SCORE_BIAS = -1.0
WORST_SIZE_BIAS = -6.0
CROWD_SIZE_BIAS = 2.1  # exp(2.1) ~ 8 strides: a box overlaps its neighbours (IoU 0.78 one anchor away)


def frames_tensor(count: int, size: tuple[int, int]) -> torch.Tensor:
    canvas, _ = letterbox([synthetic_frame(i, size) for i in range(count)], size)
    return normalize(canvas)


def score_logits(model: YOLOX, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level, finest first: objectness (frames, anchors) and class (frames, classes, anchors) logits of the
    frames without their biases."""
    head = model.head
    captured: dict[str, list[torch.Tensor]] = {"obj": [], "cls": []}

    def capture(key: str):
        return lambda module, _, out: captured[key].append(out - module.bias[:, None, None])

    hooks = [pred.register_forward_hook(capture("obj")) for pred in head.obj_preds]
    hooks += [pred.register_forward_hook(capture("cls")) for pred in head.cls_preds]
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    obj = [out.flatten(start_dim=2)[:, 0] for out in captured["obj"]]
    return obj, [out.flatten(start_dim=2) for out in captured["cls"]]


def bisect(count: Callable[[float], float], target: float, low: float = -30.0, high: float = 30.0) -> float:
    """The smallest value in [low, high] (by default a score bias's range) where ``count`` (rising with it) reaches
    ``target``, to float precision."""
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return high


def calibrate_scores(model: YOLOX, batch: torch.Tensor, target: float, conf: float, people: float,
                     person_score: float) -> list[float]:
    """One bias per level for objectness and classes together: the coarsest level's (the largest boxes) scores
    ``people`` of its anchors per frame at ``person_score`` or more, the finer levels' bias brings the candidates at
    ``conf`` to ``target`` per frame in all. Without people every level takes the one bias.

    Both scores move: with YOLOX's prior (class probability ~0.01) no objectness alone reaches a threshold of 0.01.
    """
    obj, cls = score_logits(model, batch)
    frames, levels = len(batch), len(obj)

    def passing(level: int, bias: float, threshold: float) -> float:
        scores = torch.sigmoid(obj[level] + bias) * torch.sigmoid(cls[level] + bias).max(dim=1).values
        return float((scores >= threshold).sum()) / frames

    def candidates(first_levels: int, bias: float) -> float:
        return sum(passing(level, bias, conf) for level in range(first_levels))

    if people <= 0:
        return [bisect(lambda bias: candidates(levels, bias), target)] * levels
    people_bias = bisect(lambda bias: passing(levels - 1, bias, person_score), people)
    left = target - passing(levels - 1, people_bias, conf)
    if left <= 0:
        raise ReidctlError(f"{people:g} people per frame bring more than --crowd {target:g} candidates: ask for fewer")
    return [bisect(lambda bias: candidates(levels - 1, bias), left)] * (levels - 1) + [people_bias]


def set_head_bias(
    model: YOLOX,
    score: float | list[float] | None = None,
    size: float | None = None,
    fixed_boxes: bool = False,
) -> None:
    """Set the head's score and log-size biases; ``fixed_boxes`` also zeroes the box weights, so that on any frame
    every box sits at its anchor with the bias's size (a lively model's box outputs grow large on frames it was not
    calibrated on: its exponentiated sizes overflow, and its offsets lose precision across backends). ``score``:
    the objectness and class bias, one for every level or one per level."""
    head = model.head
    levels = len(head.obj_preds)
    scores = score if isinstance(score, list) or score is None else [score] * levels
    with torch.no_grad():
        for level in range(levels):
            if scores is not None:
                head.obj_preds[level].bias.fill_(scores[level])
                head.cls_preds[level].bias.fill_(scores[level])
            if size is not None:
                head.reg_preds[level].bias[2:4] = size  # log width and height, in strides
            if fixed_boxes:
                head.reg_preds[level].weight.zero_()


def measure(path: Path, model_type: str, batch: torch.Tensor, conf: float, nms: float,
            person_score: float) -> tuple[float, float, float, int]:
    """Candidates, kept detections and kept ones of ``person_score`` or more per frame with the written checkpoint,
    and the anchors per frame."""
    model, _ = load_model(path, model_type)
    with torch.inference_mode():
        predictions = model(batch)
    if not torch.isfinite(predictions).all():
        raise ReidctlError(f"{path} gives non-finite boxes or scores on the synthetic frames")
    selection = select_detections(predictions, conf, nms)
    frames = len(batch)
    people = sum(int((rows[:, 4] * rows[:, 5] >= person_score).sum()) for rows in selection.rows)
    return (sum(selection.candidates) / frames, sum(selection.kept) / frames, people / frames,
            predictions.shape[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--model-type", default="mot17", help="mot17 (YOLOX-X, 1 class), nano, tiny, s, m, l, x")
    parser.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument(
        "--frames", type=int, default=SYNTHETIC_FRAMES, help="synthetic frames to calibrate and measure on (bench's)"
    )
    parser.add_argument("--crowd", type=float, default=1500.0, help="candidates per frame wanted for 'crowd'")
    parser.add_argument("--people", type=float, default=40.0,
                        help="of the crowd's candidates, how many per frame score as people (0: none); NMS keeps fewer")
    parser.add_argument("--person-score", type=float, default=0.6,
                        help="score of a person: ByteTrack's track_thresh 0.5 + 0.1, what starts a track")
    parser.add_argument("--conf", type=float, default=0.01, help="conf_threshold the loads are defined at")
    parser.add_argument("--nms", type=float, default=0.7, help="nms_threshold for the kept figures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        spec = resolve_spec(args.model_type, None, None, "model type")
        size = (args.size[0], args.size[1])
        if any(side <= 0 or side % 32 for side in size):
            raise ReidctlError(f"--size must be positive multiples of 32, got {list(size)}")
        batch = frames_tensor(args.frames, size)
        name = args.model_type.lower()
        paths = {load: args.output_dir / f"{name}_{load}.pth.tar" for load in LOADS}
        torch.manual_seed(args.seed)
        model = build_yolox(spec.size, spec.num_classes).eval()
        save_checkpoint(model, paths["idle"])
        set_head_bias(model, score=WORST_SCORE_BIAS, size=WORST_SIZE_BIAS)
        save_checkpoint(model, paths["worst"])
        # Calibrated on random pixels too: export-onnx checks its graph on them, and a model whose BatchNorm never
        # saw their range saturates there, where rounding differences between runtimes grow without bound.
        calibration = torch.cat([batch, sample_input(2, size)])
        model = lively_yolox(spec.size, spec.num_classes, args.seed, calibration=calibration)
        set_head_bias(model, size=CROWD_SIZE_BIAS, fixed_boxes=True)
        set_head_bias(model, score=calibrate_scores(model, batch, args.crowd, args.conf, args.people,
                                                    args.person_score))
        save_checkpoint(model, paths["crowd"])
        for load, path in paths.items():
            candidates, kept, people, anchors = measure(path, args.model_type, batch, args.conf, args.nms,
                                                        args.person_score)
            print(f"{load:>5}: {path}  candidates/frame {candidates:.1f} of {anchors} anchors, kept/frame {kept:.1f}, "
                  f"people/frame {people:.1f}")
            if load == "worst" and candidates < anchors:
                missing = anchors - candidates
                raise ReidctlError(f"the worst load left {missing:.0f} anchors per frame below {args.conf}")
    except ReidctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
