"""The configuration schema: the shipped file, defaults, overrides and errors that name the key."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from reidctl.config import Config, config_from_dict, load_config, override, to_dict
from reidctl.errors import ReidctlError


def test_shipped_config_matches_reference_schema():
    det = load_config("configs/config.yaml").detection
    assert (det.backend, det.model_type, det.conf_threshold, det.nms_threshold) == ("pytorch", "mot17", 0.01, 0.7)
    assert det.test_size == [640, 640] and det.fp16 and det.fuse
    assert det.tensorrt.engine_path == "models/bytetrack_x_mot17_fp16.trt" and det.tensorrt.workspace == 4096
    assert det.triton.url == "localhost:8101" and det.triton.preferred_batch_sizes == [1, 2, 4, 8]
    assert det.triton.max_queue_delay_ms == 0.5 and det.triton.max_in_flight == 2


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


def test_overrides_apply_and_validate():
    config = override(Config(), conf_threshold=0.3, test_size=[320, 480], fp16=None)
    assert config.detection.conf_threshold == 0.3 and config.detection.input_size == (320, 480)
    assert config.detection.fp16 is True  # None means "not given"
    with pytest.raises(ReidctlError, match="detection.nms_threshold"):
        override(Config(), nms_threshold=1.5)


def test_a_config_comes_back_from_its_dict_form_validated():
    config = override(Config(), conf_threshold=0.3, test_size=[320, 480], triton={"max_batch_size": 16})
    assert config_from_dict(to_dict(config)).detection == config.detection
    record = to_dict(config)
    record["detection"]["nms_threshold"] = 1.5  # a bench file's record is checked like a file
    with pytest.raises(ReidctlError, match="detection.nms_threshold"):
        config_from_dict(record)


@pytest.mark.parametrize("key, value, other", [("onnx_path", "models/x.onnx", "b.onnx"), ("decoded", True, False)])
def test_the_onnx_files_keys_have_their_own_place_and_the_old_ones_still_read_with_a_warning(tmp_path, key, value,
                                                                                              other):
    text = json.dumps(value)  # YAML reads JSON's scalars as they are
    new = tmp_path / "new.yaml"
    new.write_text(f"detection:\n  {key}: {text}\n")
    old = tmp_path / "old.yaml"
    old.write_text(f"detection:\n  tensorrt:\n    {key}: {text}\n    fp16: false\n")
    warnings = []
    assert getattr(load_config(new, warnings.append).detection, key) == value and warnings == []
    config = load_config(old, warnings.append)
    assert getattr(config.detection, key) == value and not config.detection.tensorrt.fp16
    assert warnings == [f"warning: config key 'detection.tensorrt.{key}' is deprecated: use 'detection.{key}'"]
    assert key not in to_dict(config)["detection"]["tensorrt"]

    # A bench file's record: the old key, unset (as every record before the move holds it) or set.
    record = to_dict(Config())["detection"]
    assert override(Config(), **{**record, "tensorrt": {**record["tensorrt"], key: None}}) == Config()
    moved = override(Config(), **{**record, "tensorrt": {**record["tensorrt"], key: value}})
    assert getattr(moved.detection, key) == value

    both = tmp_path / "both.yaml"
    both.write_text(f"detection:\n  {key}: {json.dumps(other)}\n  tensorrt:\n    {key}: {text}\n")
    with pytest.raises(ReidctlError, match=rf"'detection.{key}' \({other}\) and 'detection.tensorrt.{key}' "
                                           rf"\({value}\) differ: keep detection.{key} alone$"):
        load_config(both)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detection:\n  colour: red\n", "unknown config key 'detection.colour'"),
        ("detection:\n  triton:\n    timeout: soon\n", "config key 'detection.triton.timeout': expected float"),
        ("detection:\n  test_size: [640]\n", "detection.test_size"),
        ("detection:\n  fp16: 1\n", "config key 'detection.fp16': expected bool"),
        ("detection:\n  batches_in_flight: 0\n", "config key 'detection.batches_in_flight': expected at least 1"),
        ("detection:\n  reader_niceness: 20\n", "config key 'detection.reader_niceness': expected 0-19"),
        ("detection:\n  batch_window_ms: -1\n", "config key 'detection.batch_window_ms': expected 0-100 ms"),
        ("detection:\n  camera_buffer: 0\n", "config key 'detection.camera_buffer': expected at least 1"),
        ("detection:\n  triton:\n    max_in_flight: 0\n",
         "config key 'detection.triton.max_in_flight': expected at least 1"),
        ("detection:\n  triton:\n    shared_memory: gpu\n",
         "config key 'detection.triton.shared_memory': expected auto, cuda, system or none \\(or true / false\\), "
         "got 'gpu'"),
        ("detection: [1, 2\n", "is not valid YAML at line"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ReidctlError, match=message.replace("[", r"\[")):
        load_config(path)


def alias_bomb(levels: int, copies: int) -> str:
    """detection.model_path: a list whose level i holds ``copies`` aliases of level i-1: copies**levels values."""
    items = ["&a0 [lol, lol]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * copies)}]" for i in range(1, levels + 1)]
    return f"detection:\n  model_type: nano\n  model_path: [{', '.join(items)}]\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (alias_bomb(9, 9).encode(), "uses more than 32 YAML aliases"),  # "billion laughs"
        # 2**16 values from 32 aliases: within the limit, quoted in the error without expanding them
        (alias_bomb(16, 2).encode(),
         "config key 'detection.model_path': expected str or null, got [['lol', 'lol'], [[...], [...]]"),
        (("[" * 100_000 + "]" * 100_000).encode(), "nests deeper than 32 levels"),
        ("detection:\n  model_type: nano\n  device: cpu\n".encode("utf-16"), "is not UTF-8 text (byte 0)"),
        (b"detection:\n  model_path: \xff\xfe\n", "is not UTF-8 text (byte 25)"),
        (b"# padding\n" * 110_000, "bytes; a config is at most 1048576 bytes"),
        (b"detection:\n  test_size: [32000, 32000]\n", "multiples of 32 up to 4096, got [32000, 32000]"),
    ],
)
def test_hostile_configs_are_refused_fast_in_one_short_line(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(ReidctlError) as error:
        load_config(path)
    assert time.perf_counter() - start < 5
    text = str(error.value)
    assert message in text and "\n" not in text and len(text) < 300, text


def test_a_directory_given_as_config_is_called_a_directory(tmp_path):
    with pytest.raises(ReidctlError, match=f"config file {tmp_path} is a directory"):
        load_config(tmp_path)


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("detection:\n  test_size: &sizes [320, 320]\n  triton:\n    preferred_batch_sizes: *sizes\n")
    config = load_config(path)
    assert config.detection.test_size == [320, 320] and config.detection.triton.preferred_batch_sizes == [320, 320]


@pytest.mark.parametrize(
    ("detection", "message"),
    [
        ({"num_classes": -5}, "config key 'detection.num_classes': expected at least 1 class, got -5"),
        ({"num_classes": 0}, "config key 'detection.num_classes': expected at least 1 class, got 0"),
        ({"triton": {"url": "localhost:99999"}}, "config key 'detection.triton.url': expected host:port (port 1-65535"),
        ({"triton": {"url": "localhost:0"}}, "config key 'detection.triton.url'"),
        ({"triton": {"url": "localhost"}}, "config key 'detection.triton.url'"),
        ({"triton": {"grpc_port": 8100}}, "the HTTP, gRPC and metrics ports must differ, got [8100, 8100, 8102]"),
        ({"triton": {"metrics_port": 70000}}, "'detection.triton.metrics_port': expected a port in 1-65535"),
    ],
)
def test_values_no_model_or_server_can_take_are_refused(detection, message):
    with pytest.raises(ReidctlError) as error:
        override(Config(), **{key: value if key != "triton" else dict(value) for key, value in detection.items()})
    assert message in str(error.value)


def test_ipv6_and_named_hosts_are_endpoints():
    config = override(Config(), triton={"url": "[::1]:8101,gpu-host.lan:8111"})
    assert config.detection.triton.urls == ["[::1]:8101", "gpu-host.lan:8111"]


def test_what_a_config_path_is_when_not_a_file(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, message in [(loop, "is a symlink loop"), (fifo, "is not a regular file (a FIFO)"),
                          (Path("/dev/zero"), "is not a regular file (a device)"),
                          (tmp_path / "missing.yaml", "config file not found")]:
        with pytest.raises(ReidctlError, match=re.escape(message)):
            load_config(path)  # a FIFO would block the read, /dev/zero never end it


@pytest.mark.parametrize(("value", "kind"), [("true", "system"), ("false", "none"), ("cuda", "cuda"),
                                             ("system", "system"), ("none", "none"), ("auto", "auto")])
def test_how_frames_reach_a_local_server_reads_from_a_kind_or_a_bool(tmp_path, value, kind):
    path = tmp_path / "config.yaml"
    path.write_text(f"detection:\n  triton:\n    shared_memory: {value}\n")
    assert load_config(path).detection.triton.input_memory == kind
