"""`reidctl export-onnx`: real exports of YOLOX-nano checked with onnx and ONNX Runtime, metadata, bad input."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import reidctl

from helpers import TEST_SIZE, export, onnx_config, write_config
from reidctl.cli import app
from reidctl.core.detector import create_detector
from reidctl.core.preprocess import letterbox, normalize
from reidctl.errors import ReidctlError
from reidctl.core.preprocess import sample_input
from reidctl.export.onnx import (
    TOLERANCES,
    OnnxMetadata,
    Tolerance,
    compare_outputs,
    read_metadata,
    read_onnx,
    write_metadata,
)
from reidctl.models.checkpoint import load_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize(
    "fp16, dynamic, batch, simplify",
    [(False, True, 1, True), (False, False, 2, False), (True, True, 1, False), (True, False, 1, True)],
    ids=["fp32-dynamic", "fp32-static2", "fp16-dynamic", "fp16-static1"],
)
def test_export_is_valid_and_matches_pytorch(tmp_path, nano_checkpoint, frames, fp16, dynamic, batch, simplify):
    result = export(nano_checkpoint, tmp_path / "m.onnx", fp16=fp16, dynamic_batch=dynamic, batch=batch,
                    simplify=simplify)
    precision = "fp16" if fp16 else "fp32"
    assert result.comparison.within(TOLERANCES[precision])
    model_proto = onnx.load(str(result.path))
    onnx.checker.check_model(model_proto, full_check=True)
    info = read_onnx(result.path)
    assert (info.input_name, info.output_name, info.opset) == ("images", "output", 11)
    assert info.input_dtype == (torch.float16 if fp16 else torch.float32)
    assert info.input_size == TEST_SIZE and info.batch == (None if dynamic else batch)
    assert info.metadata == OnnxMetadata("nano", 1, TEST_SIZE, precision, True, None if dynamic else batch)

    # Independently of the export's own check (random pixels): real frames, another batch size where allowed.
    rows = 3 if dynamic else batch
    images = normalize(letterbox(frames[:rows], TEST_SIZE)[0])
    model, _ = load_model(nano_checkpoint, "nano")
    with torch.no_grad():
        reference = model(images).numpy()
        other_frames = model(normalize(letterbox(frames[-rows:], TEST_SIZE)[0])).numpy()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": images.numpy().astype(np.float16 if fp16 else np.float32)})[0]
    assert output.dtype == np.float32 and output.shape == (rows, 420, 6)
    assert compare_outputs(output, reference, decoded=True).within(TOLERANCES[precision])
    # the check can tell frames apart
    assert not compare_outputs(output, other_frames, decoded=True).within(TOLERANCES[precision])
    if not dynamic:
        other_batch = sample_input(batch + 1, TEST_SIZE).numpy().astype(np.float16 if fp16 else np.float32)
        with pytest.raises(Exception, match="invalid dimensions"):
            session.run(None, {"images": other_batch})


def test_metadata_round_trip(onnx_fp32):
    metadata = OnnxMetadata("s", 3, (640, 608), "fp16", False, 4)
    props = metadata.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert OnnxMetadata.from_props(props, "x.onnx") == metadata
    assert OnnxMetadata.from_dict(json.loads(json.dumps(metadata.as_dict())), "e.trt.json") == metadata
    with pytest.raises(ReidctlError, match="e.trt.json: the model metadata is malformed"):
        OnnxMetadata.from_dict({"model_type": "s"}, "e.trt.json")

    model_proto = onnx.load(str(onnx_fp32))
    onnx.helper.set_model_props(model_proto, {"producer_note": "kept"})
    write_metadata(model_proto, metadata)
    assert read_metadata(model_proto, "x.onnx") == metadata
    assert {p.key: p.value for p in model_proto.metadata_props}["producer_note"] == "kept"

    assert OnnxMetadata.from_props({"producer_note": "kept"}, "bytetrack.onnx") is None  # not written by reidctl
    for key, bad in [("input_size", "640"), ("decoded", "yes"), ("precision", "int8"), ("batch", "many")]:
        with pytest.raises(ReidctlError, match=f"x.onnx: reidctl metadata '{key}' is missing or malformed"):
            OnnxMetadata.from_props({**props, key: bad}, "x.onnx")
    with pytest.raises(ReidctlError, match="'num_classes' is missing"):
        OnnxMetadata.from_props({k: v for k, v in props.items() if k != "num_classes"}, "x.onnx")


def test_raw_output_detects_the_same_as_decoded(tmp_path, nano_checkpoint, onnx_fp32, frames):
    raw_path = export(nano_checkpoint, tmp_path / "raw.onnx", decode=False).path
    assert read_onnx(raw_path).metadata.decoded is False
    with create_detector(onnx_config(onnx_fp32), "onnxruntime") as decoded, \
            create_detector(onnx_config(raw_path), "onnxruntime") as raw:
        assert decoded.runner.decoded and not raw.runner.decoded
        for frame in frames[:4]:
            expected, got = decoded.detect(frame), raw.detect(frame)
            assert len(expected) > 0 and got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_failed_verification_writes_nothing(tmp_path, nano_checkpoint):
    steps = []
    with pytest.raises(ReidctlError, match="ONNX Runtime disagrees with PyTorch: .*nothing written"):
        export(nano_checkpoint, tmp_path / "m.onnx", fp16=True, tolerance=Tolerance(1e-7, 1e-7),
               on_progress=lambda *step: steps.append(step))
    assert list(tmp_path.iterdir()) == []
    assert steps == [("tracing the model", 0, 4), ("simplifying (onnxslim)", 1, 4), ("checking the graph", 2, 4),
                     ("verifying with ONNX Runtime", 3, 4)]  # and no "done": no file


def test_cli_export_follows_config_and_prints_table(tmp_path, monkeypatch, nano_checkpoint):
    monkeypatch.chdir(tmp_path)
    onnx_path = Path("models/nano.onnx")
    config = write_config(tmp_path / "config.yaml", nano_checkpoint, onnx_path=str(onnx_path))
    result = invoke("export-onnx", "-c", config, "--no-progress")
    assert result.exit_code == 0, result.output
    for text in ("ONNX export", "models/nano.onnx", "fp32", "dynamic", "decoded", "Max abs diff", "Export time"):
        assert text in result.output
    assert read_onnx(onnx_path).metadata.model_type == "nano" and "deprecated" not in result.stderr

    # The key before detection.onnx_path: still followed, with a warning. The bar ends at its last step.
    old_key = write_config(tmp_path / "old.yaml", nano_checkpoint, tensorrt={"onnx_path": "models/old.onnx"})
    result = invoke("export-onnx", "-c", old_key, "--no-simplify")
    assert result.exit_code == 0, result.output
    (bar,) = [line for line in result.stdout.splitlines() if " export-onnx " in line]
    assert " 3/3 done " in bar
    assert read_onnx(Path("models/old.onnx")).metadata.model_type == "nano"
    assert "config key 'detection.tensorrt.onnx_path' is deprecated: use 'detection.onnx_path'" in result.stderr

    engine_named = tmp_path / "engines" / "det.trt"
    config = write_config(tmp_path / "c2.yaml", nano_checkpoint, tensorrt={"engine_path": str(engine_named)})
    result = invoke("export-onnx", "-c", config, "--no-progress", "--json", "--fp16", "--static-batch", "--batch", "2",
                    "--no-decode", "--opset", "17")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["path"] == str(engine_named.with_suffix(".onnx")) and report["opset"] == 17
    assert report["metadata"] == {"model_type": "nano", "num_classes": 1, "input_size": [128, 160], "precision": "fp16",
                                  "decoded": False, "batch": 2, "reidctl_version": reidctl.__version__}
    assert read_onnx(engine_named.with_suffix(".onnx")).opset == 17


def test_cli_export_without_checkpoint_warns_untrained(tmp_path):
    config = write_config(tmp_path / "config.yaml", None)
    result = invoke("export-onnx", "-c", config, "-o", tmp_path / "u.onnx", "--no-progress", "--no-simplify")
    assert result.exit_code == 0, result.output
    assert "weights are untrained" in result.output
    assert (tmp_path / "u.onnx").is_file()


def test_cli_export_bad_input(tmp_path, nano_checkpoint):
    config = write_config(tmp_path / "config.yaml", nano_checkpoint)
    out = tmp_path / "out" / "m.onnx"
    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["-m", tmp_path / "missing.pth.tar"], "checkpoint not found"),
        (["-m", corrupt], "is not a PyTorch checkpoint"),
        (["--opset", "9"], "opset 9 is not supported: use 11 to 20"),
        (["--opset", "21"], "opset 21 is not supported"),
        (["--batch", "4"], "--batch fixes the batch size of a --static-batch graph"),
        (["--test-size", "100x160"], "multiples of 32"),
        (["-o", blocker / "m.onnx"], "cannot create output directory"),
    ]
    for extra, message in cases:
        result = invoke("export-onnx", "-c", config, "-o", out, "--no-progress", *extra)
        assert message in one_line_error(result), (extra, result.output)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_decoded_boxes_are_compared_at_the_coarsest_strides_scale():
    """A decoded coordinate's error is the head's error (in grid cells) times its stride: 0.03 px near the origin is
    fp16's resolution at stride 32, a whole pixel is not; raw head output stays compared in cells."""
    reference = np.zeros((1, 1, 6), np.float32)
    reference[0, 0, :4] = (0.3, 0.3, 20.0, 40.0)
    fp16 = TOLERANCES["fp16"]
    near = reference.copy()
    near[0, 0, 1] += 0.03
    assert compare_outputs(near, reference, decoded=True).within(fp16)
    assert not compare_outputs(near, reference, decoded=False).within(fp16)
    far = reference.copy()
    far[0, 0, 1] += 1.0
    assert not compare_outputs(far, reference, decoded=True).within(fp16)
