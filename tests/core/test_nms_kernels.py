"""Batched greedy NMS (reidctl.core.nms_kernels, Triton-language kernels) against torchvision.ops.batched_nms.

Without a GPU the kernels run in the Triton language's interpreter, which is chosen when a kernel is defined, so
TRITON_INTERPRET=1 must be set before reidctl.core.nms_kernels is imported: one subprocess per module runs every
case and returns the kept anchors. With CUDA, the same comparison runs at full size (8 frames of 8,400 anchors).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from helpers import ROOT, needs_gpu
from reidctl.core.postprocess import select_detections


# The interpreter walks reductions element by element: 4-word chunks keep it quick and still exercise the scan's
# loop over chunks (the GPU default, 128 words, runs in one case and in the CUDA tests).
INTERPRETER_RUN = """
import sys
import torch
from reidctl.core import nms_kernels
from reidctl.core.postprocess import select_detections

cases = torch.load(sys.argv[1])
results = {}
for name, case in cases.items():
    nms_kernels.SCAN_CHUNK = case.get("chunk", 4)
    if "predictions" in case:
        selection = select_detections(case["predictions"], case["conf"], case["iou"], method="kernels")
        results[name] = {"rows": selection.rows, "candidates": selection.candidates}
        continue
    kept = nms_kernels.batched_greedy_nms(case["boxes"], case["scores"], case["classes"], case["conf"], case["iou"])
    results[name] = {
        "kept": [kept.order[b][kept.keep[b]].tolist() for b in range(len(kept.keep))],
        "candidates": kept.candidates.tolist(),
    }
torch.save(results, sys.argv[2])
"""


def boxes_from(centres: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)


def scored_case(generator, boxes: torch.Tensor, classes: int, conf: float, iou: float) -> dict:
    """A case of (frames, anchors, 4) boxes with random scores and class ids."""
    frames, anchors = boxes.shape[:2]
    return {
        "boxes": boxes,
        "scores": torch.rand(frames, anchors, generator=generator),
        "classes": torch.randint(0, classes, (frames, anchors), generator=generator),
        "conf": conf,
        "iou": iou,
    }


def random_case(generator, frames=2, anchors=300, classes=1, conf=0.3, iou=0.5) -> dict:
    centres = torch.rand(frames, anchors, 2, generator=generator) * 200
    sizes = torch.rand(frames, anchors, 2, generator=generator) * 40 + 2
    return scored_case(generator, boxes_from(centres, sizes), classes, conf, iou)


def crowd_case(generator, frames=2, anchors=300, people=12, classes=1, conf=0.05, iou=0.7) -> dict:
    """Candidates jittered around a few person-shaped boxes, as a detector gives them."""
    person = torch.randint(0, people, (frames, anchors), generator=generator)
    centres = torch.rand(frames, people, 2, generator=generator) * torch.tensor([300.0, 200.0])
    centres = torch.gather(centres, 1, person[..., None].expand(-1, -1, 2))
    centres = centres + torch.randn(frames, anchors, 2, generator=generator) * 3
    sizes = torch.tensor([30.0, 80.0]) * (1 + 0.1 * torch.randn(frames, anchors, 2, generator=generator))
    return scored_case(generator, boxes_from(centres, sizes), classes, conf, iou)


def build_cases() -> dict[str, dict]:
    generator = torch.Generator().manual_seed(7)
    cases = {
        "random": random_case(generator),
        "crowd": crowd_case(generator),
        "crowd_default_chunk": {**crowd_case(generator, frames=1, anchors=200), "chunk": 128},
        "classes": crowd_case(generator, classes=4),
        "empty": {**random_case(generator, frames=2, anchors=100), "conf": 1.5},
        "mixed_batch": crowd_case(generator, frames=3, anchors=200, conf=0.0),
    }
    # One candidate in a frame of 50 anchors.
    one = random_case(generator, frames=1, anchors=50)
    one["scores"] = torch.full((1, 50), 0.1)
    one["scores"][0, 17] = 0.9
    cases["one_box"] = one
    # Frame 0 has no candidate, frame 1 all of them, frame 2 about half.
    mixed = cases["mixed_batch"]
    mixed["scores"][0] = -1.0
    mixed["scores"][2] = torch.where(mixed["scores"][2] > 0.5, mixed["scores"][2], -1.0)
    # Exact ties: five score levels over overlapping boxes.
    ties = crowd_case(generator, frames=2, anchors=250, conf=0.1)
    ties["scores"] = torch.randint(1, 6, (2, 250), generator=generator).float() / 5
    cases["ties"] = ties
    # IoU exactly 0.5 (10x10 box against its 10x5 half): kept at threshold 0.5, suppressed at 0.49.
    pair = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]])
    for name, iou in (("boundary_kept", 0.5), ("boundary_suppressed", 0.49)):
        cases[name] = {"boxes": pair, "scores": torch.tensor([[0.9, 0.8]]), "classes": torch.zeros(1, 2),
                       "conf": 0.1, "iou": iou}
    # select_detections end to end on decoded predictions: cx, cy, w, h, obj, two class scores.
    crowd = crowd_case(generator, frames=3, anchors=200, classes=2)
    centres = (crowd["boxes"][..., :2] + crowd["boxes"][..., 2:]) / 2
    sizes = crowd["boxes"][..., 2:] - crowd["boxes"][..., :2]
    class_scores = torch.rand(3, 200, 2, generator=generator)
    cases["select_detections"] = {
        "predictions": torch.cat([centres, sizes, crowd["scores"][..., None], class_scores], dim=-1),
        "conf": 0.05,
        "iou": 0.7,
    }
    return cases


def reference_kept(case: dict) -> list[list[int]]:
    """torchvision.ops.batched_nms per frame over the candidates, as anchor indices by descending score."""
    kept = []
    for boxes, scores, classes in zip(case["boxes"], case["scores"], case["classes"]):
        candidates = torch.nonzero(scores >= case["conf"]).flatten()
        keep = torchvision.ops.batched_nms(boxes[candidates], scores[candidates], classes[candidates], case["iou"])
        kept.append(candidates[keep].tolist())
    return kept


def tie_broken(case: dict) -> dict:
    """The case with distinct scores in the order the kernels rank tied ones: by anchor index."""
    ranks = torch.empty_like(case["scores"])
    order = torch.sort(case["scores"], dim=1, descending=True, stable=True).indices
    ranks.scatter_(1, order, -torch.arange(order.shape[1], dtype=torch.float32).expand_as(order))
    distinct = torch.where(case["scores"] >= case["conf"], ranks + 10**6, -1.0)
    return {**case, "scores": distinct, "conf": 0.0}


@pytest.fixture(scope="module")
def cases() -> dict[str, dict]:
    return build_cases()


@pytest.fixture(scope="module")
def interpreted(cases, tmp_path_factory) -> dict[str, dict]:
    """Every case through the kernels in the Triton language's interpreter, on the CPU."""
    folder = tmp_path_factory.mktemp("nms")
    torch.save(cases, folder / "cases.pt")
    python_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": python_path}
    run = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", INTERPRETER_RUN, str(folder / "cases.pt"), str(folder / "kept.pt")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(folder / "kept.pt", weights_only=False)


@pytest.mark.parametrize(
    "name", ["random", "crowd", "crowd_default_chunk", "classes", "empty", "one_box", "mixed_batch"]
)
def test_kernels_keep_what_torchvision_keeps(cases, interpreted, name):
    case, result = cases[name], interpreted[name]
    expected = reference_kept(case)
    assert result["kept"] == expected  # same anchors, in the same order (by descending score)
    assert result["candidates"] == [int((s >= case["conf"]).sum()) for s in case["scores"]]


def test_cases_cover_what_they_claim(cases, interpreted):
    kept = {name: [len(frame) for frame in result["kept"]] for name, result in interpreted.items() if "kept" in result}
    assert kept["empty"] == [0, 0] and kept["one_box"] == [1]
    assert interpreted["one_box"]["kept"] == [[17]]
    mixed = interpreted["mixed_batch"]["candidates"]
    assert mixed[0] == 0 and mixed[1] == 200 and 0 < mixed[2] < 200 and kept["mixed_batch"][0] == 0
    for name in ("crowd", "classes", "ties"):  # NMS had work to do: most candidates were suppressed
        assert sum(kept[name]) < sum(interpreted[name]["candidates"]) / 2
    frames_classes = zip(interpreted["classes"]["kept"], cases["classes"]["classes"])
    assert all(len(set(classes[frame].tolist())) > 1 for frame, classes in frames_classes)


def test_exact_ties_are_broken_by_anchor_index(cases, interpreted):
    case = cases["ties"]
    assert interpreted["ties"]["kept"] == reference_kept(tie_broken(case))
    # And it is a greedy result for the tied scores themselves: kept boxes do not suppress each other, and every
    # dropped candidate is suppressed by a kept box scored at least as high.
    for frame, kept in enumerate(interpreted["ties"]["kept"]):
        boxes, scores = case["boxes"][frame], case["scores"][frame]
        iou = torchvision.ops.box_iou(boxes, boxes)
        kept = torch.tensor(kept)
        assert not (iou[kept][:, kept].triu(diagonal=1) > case["iou"]).any()
        dropped = [a for a in torch.nonzero(scores >= case["conf"]).flatten().tolist() if a not in set(kept.tolist())]
        for anchor in dropped:
            assert ((iou[anchor, kept] > case["iou"]) & (scores[kept] >= scores[anchor])).any()


def test_iou_exactly_at_threshold_does_not_suppress(interpreted):
    assert interpreted["boundary_kept"]["kept"] == [[0, 1]]
    assert interpreted["boundary_suppressed"]["kept"] == [[0]]


def test_select_detections_rows_match_torchvision_path(cases, interpreted):
    case = cases["select_detections"]
    expected = select_detections(case["predictions"], case["conf"], case["iou"], method="torchvision")
    ours = interpreted["select_detections"]
    assert ours["candidates"] == expected.candidates
    assert [rows.shape for rows in ours["rows"]] == [rows.shape for rows in expected.rows]
    for rows, reference in zip(ours["rows"], expected.rows):
        np.testing.assert_array_equal(rows, reference)
    assert all(len(np.unique(rows[:, 6])) == 2 for rows in expected.rows)  # both classes detected in every frame


def full_size_predictions(frames: int, load: str, seed: int = 0) -> torch.Tensor:
    """Decoded predictions for 640x640 frames (8,400 anchors, one class) on the GPU."""
    from reidctl.models.yolox import anchor_grids

    generator = torch.Generator().manual_seed(seed)
    grids, strides = anchor_grids((640, 640), torch.float32, torch.device("cpu"))
    anchors = grids.shape[1]
    if load == "worst":  # every anchor a candidate, boxes too small to overlap: NMS keeps them all
        centres = ((grids + 0.5) * strides).expand(frames, -1, -1)
        sizes = strides.expand(frames, -1, 2) * 0.02
    else:  # crowd: candidates clustered around 60 people
        case = crowd_case(generator, frames=frames, anchors=anchors, people=60)
        centres = (case["boxes"][..., :2] + case["boxes"][..., 2:]) / 2 * 2
        sizes = case["boxes"][..., 2:] - case["boxes"][..., :2]
    scores = torch.rand(frames, anchors, 2, generator=generator) * 0.5 + 0.4
    return torch.cat([centres, sizes, scores], dim=-1).cuda()


@needs_gpu
@pytest.mark.parametrize("load", ["worst", "crowd"])
def test_full_size_batch_on_gpu_matches_torchvision(load):
    predictions = full_size_predictions(8, load)
    ours = select_detections(predictions, 0.01, 0.7, method="kernels")
    expected = select_detections(predictions, 0.01, 0.7, method="torchvision")
    assert ours.candidates == expected.candidates == [8400] * 8
    assert ours.kept == expected.kept
    for rows, reference in zip(ours.rows, expected.rows):
        np.testing.assert_array_equal(rows, reference)
    if load == "worst":
        assert ours.kept == [8400] * 8
    else:
        assert max(ours.kept) < 2000
