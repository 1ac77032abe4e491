"""The TensorRT model of the Triton repository: what config.pbtxt says for an engine's sidecar, batch limits the
engine cannot serve, and the image's TensorRT version. Written and parsed with Triton's own schema; no server."""

import json
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from helpers import write_config
from reidctl.cli import app
from reidctl.config import TritonConfig, load_config
from reidctl.errors import ReidctlError
from reidctl.triton.compose import DEFAULT_IMAGE, image_tensorrt_warning, same_tensorrt_release
from reidctl.triton.repository import TENSORRT_MODEL, read_model_config, tensorrt_model_io, write_repository

ANCHORS = (128 // 8) * (160 // 8) + (128 // 16) * (160 // 16) + (128 // 32) * (160 // 32)
FP32 = grpcclient.model_config_pb2.TYPE_FP32


def sidecar(batch=-1, profile=(1, 4, 8), version="10.8.0.43"):
    data = {
        "tensorrt_version": version,
        "inputs": [{"name": "images", "shape": [batch, 3, 128, 160], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": [batch, ANCHORS, 6], "dtype": "float32"}],
    }
    if profile:
        data["profile"] = dict(zip(("min_batch", "opt_batch", "max_batch"), profile))
    return data


def write_engine(tmp_path: Path, data: dict) -> Path:
    engine = tmp_path / "e.trt"
    engine.write_bytes(b"serialized engine bytes")
    Path(f"{engine}.json").write_text(json.dumps(data))
    return engine


def trt_config(tmp_path: Path, nano_checkpoint, engine: Path, **triton):
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, triton=triton))
    write_repository(config, tmp_path / "repo", engine=engine, warn=lambda _: None)
    return read_model_config(tmp_path / "repo" / TENSORRT_MODEL / "config.pbtxt")


def test_dynamic_engine_within_its_profile(tmp_path, nano_checkpoint):
    config = trt_config(tmp_path, nano_checkpoint, write_engine(tmp_path, sidecar(profile=(1, 4, 8))))
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
    assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [("images", [3, 128, 160], FP32)]
    assert [(t.name, list(t.dims)) for t in config.output] == [("output", [ANCHORS, 6])]


def test_max_batch_size_beyond_the_profile_is_refused_with_the_fix():
    where = Path("e.trt.json")
    # `build-engine --max-batch 4` with Triton's default 8: Triton would refuse the model
    with pytest.raises(ReidctlError) as info:
        tensorrt_model_io(sidecar(profile=(1, 2, 4)), where, TritonConfig())
    message = str(info.value)
    assert "\n" not in message
    assert message == ("Triton max_batch_size 8 exceeds the engine's largest batch 4 (e.trt.json): rebuild it with "
                       "`reidctl build-engine --max-batch 8` or use detection.triton.max_batch_size and "
                       "preferred_batch_sizes at most 4")
    # when the preferred sizes fit, lowering max_batch_size alone is the fix
    with pytest.raises(ReidctlError, match=r"or use `reidctl setup-triton --max-batch-size 4`$"):
        tensorrt_model_io(sidecar(profile=(1, 2, 4)), where, TritonConfig(preferred_batch_sizes=[1, 2, 4]))
    with pytest.raises(ReidctlError, match=r"profile starts at batch 2 .* Triton sends batches from 1: rebuild it "
                                           r"with `reidctl build-engine --min-batch 1 --max-batch 8`"):
        tensorrt_model_io(sidecar(profile=(2, 4, 8)), where, TritonConfig())
    with pytest.raises(ReidctlError, match=r"e.trt.json: key 'profile' must hold min_batch and max_batch"):
        tensorrt_model_io(sidecar(profile=None), where, TritonConfig())


def test_cli_refuses_the_repository_in_one_line(tmp_path, nano_checkpoint):
    engine = write_engine(tmp_path, sidecar(profile=(1, 2, 4)))
    config = write_config(tmp_path / "c.yaml", nano_checkpoint)
    result = CliRunner().invoke(app, ["setup-triton", "-c", str(config), "-r", str(tmp_path / "repo"),
                                      "--engine", str(engine)], catch_exceptions=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "error: Triton max_batch_size 8 exceeds the engine's largest batch 4" in result.output
    assert not (tmp_path / "repo" / TENSORRT_MODEL / "config.pbtxt").exists()


def test_fixed_batch_engine_is_served_without_batching(tmp_path, nano_checkpoint):
    config = trt_config(tmp_path, nano_checkpoint, write_engine(tmp_path, sidecar(batch=4, profile=(4, 4, 4))))
    # max_batch_size 0 and full dims: with 8 and the batch stripped, Triton would refuse the engine
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [4, 3, 128, 160])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("output", [4, ANCHORS, 6])]


def test_image_tensorrt_version():
    assert same_tensorrt_release("10.4.0", "10.4.0.26") and not same_tensorrt_release("10.4.0", "10.5.0.18")
    trtllm = "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3"  # TensorRT 10.4.0 in NVIDIA's matrix
    assert image_tensorrt_warning("10.4.0.26", trtllm) is None
    assert image_tensorrt_warning("10.8.0.43", trtllm) == (
        f"warning: the engine was built with TensorRT 10.8.0.43, but {trtllm} has TensorRT 10.4.0: its Triton cannot "
        "load the engine; build it inside that image or pick the image with its TensorRT (--image)")
    # images whose TensorRT is not verified here: no warning rather than a false one
    assert image_tensorrt_warning("10.8.0.43", DEFAULT_IMAGE) is None
    assert image_tensorrt_warning("10.8.0.43", "registry.example/tritonserver:24.10-trtllm-python-py3") is None


def test_setup_warns_about_the_images_tensorrt(tmp_path, nano_checkpoint):
    engine = write_engine(tmp_path, sidecar(version="10.8.0.43"))
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint))
    warnings = []
    image = "nvcr.io/nvidia/tritonserver:24.12-trtllm-python-py3"  # TensorRT 10.7.0 in NVIDIA's matrix
    write_repository(config, tmp_path / "repo", engine=engine, image=image, warn=warnings.append)
    assert warnings == [image_tensorrt_warning("10.8.0.43", image)]
    assert f"but {image} has TensorRT 10.7.0" in warnings[0]
