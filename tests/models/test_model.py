"""YOLOX layout, ByteTrack checkpoint round trips and the loader's errors."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_checkpoint
from reidctl.errors import ReidctlError
from reidctl.models.checkpoint import infer_spec, load_model, read_state_dict
from reidctl.models.yolox import build_yolox

# Parameter counts of the official models (YOLOX paper / model zoo, 80 classes): a layout check.
OFFICIAL_PARAMS_M = {"nano": 0.91, "tiny": 5.06, "s": 8.97, "m": 25.3, "l": 54.2, "x": 99.1}


@pytest.mark.parametrize("size", OFFICIAL_PARAMS_M)
def test_parameter_counts_match_official_models(size):
    params = sum(p.numel() for p in build_yolox(size, 80).parameters()) / 1e6
    assert params == pytest.approx(OFFICIAL_PARAMS_M[size], rel=0.01)


def test_bytetrack_key_names():
    keys = build_yolox("x", 1).state_dict().keys()
    for key in (
        "backbone.backbone.stem.conv.conv.weight",
        "backbone.backbone.dark5.1.conv2.bn.running_var",
        "backbone.C3_n4.m.3.conv2.conv.weight",
        "head.stems.2.bn.num_batches_tracked",
        "head.cls_preds.0.weight",
        "head.obj_preds.2.bias",
    ):
        assert key in keys


@pytest.mark.parametrize("size", ["nano", "tiny"])
def test_checkpoint_round_trip_strict(tmp_path, size):
    path = make_checkpoint(tmp_path / f"{size}.pth.tar", size=size, num_classes=1, seed=3)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model"}
    model, spec = load_model(path, "auto")
    assert (spec.size, spec.num_classes) == (size, 1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, payload["model"][key]), key
    x = torch.rand(1, 3, 64, 96)
    out = model(x)
    assert out.shape == (1, (8 * 12) + (4 * 6) + (2 * 3), 6)


def test_bare_state_dict_and_inferred_class_count(tmp_path):
    model = build_yolox("nano", 3)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    _, spec = load_model(tmp_path / "bare.pth", "nano")
    assert spec.num_classes == 3


def test_mot17_means_x_with_one_class(tmp_path):
    spec = infer_spec(build_yolox("x", 1).state_dict())
    assert (spec.size, spec.num_classes) == ("x", 1)


@pytest.mark.parametrize(
    ("model_type", "num_classes", "message"),
    [
        ("mot17", None, "model_type 'mot17' is YOLOX-x"),
        ("tiny", None, "is YOLOX-tiny"),
        ("nano", 2, "2 class(es) were expected"),
    ],
)
def test_layout_mismatch_is_named(tmp_path, model_type, num_classes, message):
    path = make_checkpoint(tmp_path / "nano.pth.tar")
    with pytest.raises(ReidctlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(path, model_type, num_classes)


def test_unexpected_and_missing_keys_are_named(tmp_path):
    state = build_yolox("nano", 1).state_dict()
    state["head.extra.weight"] = torch.zeros(1)
    del state["head.reg_preds.1.bias"]
    torch.save({"model": state}, tmp_path / "edited.pth.tar")
    with pytest.raises(ReidctlError, match=r"missing head.reg_preds.1.bias; unexpected head.extra.weight"):
        load_model(tmp_path / "edited.pth.tar", "nano")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ReidctlError, match="junk.pth is not a PyTorch checkpoint$"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"model": {"weights": [1, 2]}}, tmp_path / "nodict.pth")
    with pytest.raises(ReidctlError, match="holds no model state dict"):
        read_state_dict(tmp_path / "nodict.pth")
    torch.save({"model": {"a.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ReidctlError, match="is not a YOLOX checkpoint"):
        load_model(tmp_path / "other.pth")
    with pytest.raises(ReidctlError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth.tar")


def test_standard_initialisation_gives_low_scores():
    # YOLOX's prior-probability bias init: untrained weights score ~1e-4, below the 0.01 threshold.
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_yolox("nano", 1).eval()(torch.rand(1, 3, 64, 64))
    assert float((out[..., 4] * out[..., 5]).max()) < 0.01


class RunsACommand:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.random.default_rng(0).bytes(4096), "is not a PyTorch checkpoint$"),
        (b"", "is not a PyTorch checkpoint$"),
        (b"model: yolox\n", "is not a PyTorch checkpoint$"),  # torch.load fails with a KeyError here
        (pickle.dumps({"model": 1}, protocol=4), "is not a PyTorch checkpoint$"),  # a plain pickle
    ],
)
def test_foreign_files_are_not_checkpoints_and_no_advice_to_unpickle(tmp_path, content, message):
    path = tmp_path / "model.pth.tar"
    path.write_bytes(content)
    with pytest.raises(ReidctlError, match=message) as error:
        read_state_dict(path)
    assert "weights_only" not in str(error.value)


def test_a_checkpoint_with_code_is_refused_for_safety_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": RunsACommand(marker)}, tmp_path / "evil.pth.tar")
    refused = r"evil.pth.tar contains code objects \((posix|os)\.system\); refused for safety$"
    with pytest.raises(ReidctlError, match=refused):
        read_state_dict(tmp_path / "evil.pth.tar")
    assert not marker.exists()


def test_a_directory_given_as_checkpoint_is_called_a_directory(tmp_path):
    with pytest.raises(ReidctlError, match=f"checkpoint {tmp_path} is a directory, not a file"):
        read_state_dict(tmp_path)
