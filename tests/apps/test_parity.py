"""Accuracy parity: box matching, real backends against PyTorch fp32, and a diverging backend kept from `recommend`."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import export, write_config
from reidctl.cli import app
from reidctl.config import load_config
from reidctl.apps.bench_report import load_report
from reidctl.apps.parity import compare_frame, run_parity

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def rows(*boxes):
    """(x1, y1, x2, y2, score) -> (N, 7) rows with obj_conf = score, class_conf 1, class 0."""
    return np.array([[x1, y1, x2, y2, score, 1.0, 0.0] for x1, y1, x2, y2, score in boxes], np.float32).reshape(-1, 7)


def test_compare_frame_matches_at_high_iou_and_counts_the_rest():
    reference = rows(
        (0, 0, 100, 200, 0.9), (300, 0, 400, 200, 0.5), (500, 0, 600, 200, 0.105), (700, 0, 800, 200, 0.05)
    )
    candidate = rows(
        (1, 1, 101, 201, 0.88),  # IoU ~0.98: matched, score 0.02 lower
        (330, 0, 430, 200, 0.5),  # IoU ~0.54: the reference box is missed and this one is extra
        (500, 0, 600, 200, 0.095),  # just under the counted score, yet it matches: a score difference only
        (900, 0, 950, 100, 0.06),  # extra, but under the counted score: not counted
    )
    result = compare_frame(reference, candidate)
    assert (result.reference_boxes, result.matched, result.missed, result.extra) == (3, 2, 1, 1)
    assert max(result.score_diffs) == pytest.approx(0.02, abs=1e-6)
    same = compare_frame(reference, reference.copy())
    assert (same.matched, same.missed, same.extra, max(same.score_diffs)) == (3, 0, 0, 0.0)
    assert compare_frame(rows(), rows()).reference_boxes == 0


def test_a_box_of_another_class_does_not_match():
    reference, candidate = rows((0, 0, 100, 200, 0.9)), rows((0, 0, 100, 200, 0.9))
    candidate[0, 6] = 1.0
    result = compare_frame(reference, candidate)
    assert (result.matched, result.missed, result.extra) == (0, 1, 1)


@pytest.fixture(scope="module")
def perturbed_onnx(tmp_path_factory, nano_checkpoint):
    """The same model with its objectness biases raised by 0.5: an export of slightly changed weights."""
    folder = tmp_path_factory.mktemp("perturbed")
    checkpoint = torch.load(nano_checkpoint, map_location="cpu", weights_only=False)
    for name, tensor in checkpoint["model"].items():
        if name.startswith("head.obj_preds.") and name.endswith(".bias"):
            tensor.add_(0.5)
    torch.save(checkpoint, folder / "perturbed.pth.tar")
    return export(folder / "perturbed.pth.tar", folder / "perturbed.onnx").path


def _onnx_config(config, onnx_path):
    return dataclasses.replace(config, detection=dataclasses.replace(config.detection, onnx_path=str(onnx_path)))


def test_identical_export_passes_and_perturbed_one_is_flagged(small_config, onnx_fp32, perturbed_onnx, frames):
    config = load_config(small_config)
    reference, same = run_parity(_onnx_config(config, onnx_fp32), ["pytorch", "onnxruntime"], frames, 0.02, 0.05)
    assert (reference.backend, reference.precision, reference.status) == ("pytorch", "fp32", "reference")
    assert reference.reference_boxes > 20  # the frames give boxes worth comparing
    assert same.status == "ok" and same.precision == "fp32" and not same.flagged
    assert same.matched == reference.reference_boxes and same.missed == same.extra == 0
    assert same.max_score_diff < 1e-4
    assert reference.runs_on == same.runs_on == "cpu"
    assert torch.backends.cudnn.allow_tf32  # the reference's fp32-only arithmetic ends with it

    _, perturbed = run_parity(_onnx_config(config, perturbed_onnx), ["onnxruntime"], frames, 0.02, 0.05)
    assert perturbed.flagged and perturbed.max_score_diff > 0.05


def test_bench_parity_flags_the_backend_and_recommend_never_chooses_it(
    tmp_path, nano_checkpoint, perturbed_onnx, frames, video_file
):
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, onnx_path=str(perturbed_onnx))
    output = tmp_path / "bench.json"
    result = invoke(
        "bench",
        "-b",
        "onnxruntime,pytorch",
        "--iters",
        2,
        "--warmup",
        0,
        "--cameras",
        1,
        "--parity",
        "--source",
        video_file,
        "-c",
        config,
        "-o",
        output,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # titles and lines may wrap at any terminal width
    assert "Parity against PyTorch fp32" in text  # the table; its verdict cells may be cut at a narrow width
    assert "parity: detections diverge from pytorch fp32 - onnxruntime fp32" in text
    parity = {p["backend"]: p for p in json.loads(output.read_text())["parity"]}
    assert parity["pytorch"]["status"] == "reference" and parity["onnxruntime"]["flagged"]
    assert load_report(output).parity_flagged(load_report(output).backends[0])  # onnxruntime, measured at fp32

    rec = invoke("recommend", "--bench", output, "--cameras", 1, "--fps", 0.1, "--latency-ms", 10000)
    assert "Recommended: pytorch" in rec.output
    assert "onnxruntime: detections diverge (parity against pytorch fp32: onnxruntime fp32:" in rec.output.replace(
        "\n", " "
    )


def test_a_looser_tolerance_passes_what_a_tight_one_flags(small_config, perturbed_onnx, frames):
    config = _onnx_config(load_config(small_config), perturbed_onnx)
    _, loose = run_parity(config, ["onnxruntime"], frames[:4], tolerance=10.0, score_tolerance=1.0)
    assert loose.status == "ok" and not loose.flagged
