"""The configuration schema: the shipped file, defaults, overrides and errors that name the key."""

import pytest

from reidctl.config import Config, load_config, override
from reidctl.errors import ReidctlError


def test_shipped_config_matches_reference_schema():
    det = load_config("configs/config.yaml").detection
    assert (det.backend, det.model_type, det.conf_threshold, det.nms_threshold) == ("pytorch", "mot17", 0.01, 0.7)
    assert det.test_size == [640, 640] and det.fp16 and det.fuse
    assert det.tensorrt.engine_path == "models/bytetrack_x_mot17_fp16.trt" and det.tensorrt.workspace == 4096
    assert det.triton.url == "localhost:8101" and det.triton.preferred_batch_sizes == [1, 2, 4, 8]
    assert det.triton.max_queue_delay_ms == 0.5


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


def test_overrides_apply_and_validate():
    config = override(Config(), conf_threshold=0.3, test_size=[320, 480], fp16=None)
    assert config.detection.conf_threshold == 0.3 and config.detection.input_size == (320, 480)
    assert config.detection.fp16 is True  # None means "not given"
    with pytest.raises(ReidctlError, match="detection.nms_threshold"):
        override(Config(), nms_threshold=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detection:\n  colour: red\n", "unknown config key 'detection.colour'"),
        ("detection:\n  triton:\n    timeout: soon\n", "config key 'detection.triton.timeout': expected float"),
        ("detection:\n  test_size: [640]\n", "detection.test_size"),
        ("detection:\n  fp16: 1\n", "config key 'detection.fp16': expected bool"),
        ("detection: [1, 2\n", "is not valid YAML at line"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ReidctlError, match=message.replace("[", r"\[")):
        load_config(path)
