"""The tracking: section of the config: ByteTrack's defaults in the shipped file, overrides and checked values."""

import pytest

from reidctl.config import Config, TrackingConfig, load_config, override_tracking
from reidctl.errors import ReidctlError


def test_shipped_config_has_bytetrack_defaults():
    assert load_config("configs/config.yaml").tracking == TrackingConfig()
    t = TrackingConfig()
    assert (t.track_thresh, t.track_buffer, t.match_thresh, t.low_thresh) == (0.5, 30, 0.8, 0.1)
    assert (t.min_box_area, t.aspect_ratio_thresh, t.mot20, t.crop_size) == (10, 1.6, False, [128, 256])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"low_thresh": 0.6}, "tracking.low_thresh': expected below tracking.track_thresh"),
        ({"match_thresh": 1.2}, "tracking.match_thresh': expected a value in [0, 1]"),
        ({"crops_every": 0}, "tracking.crops_every': expected at least 1"),
        ({"crop_size": [128]}, "tracking.crop_size'"),
    ],
)
def test_bad_tracking_values_name_the_key(values, message):
    with pytest.raises(ReidctlError, match=message.replace("[", r"\[")):
        override_tracking(Config(), **values)


def test_unknown_tracking_key_is_an_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("tracking:\n  track_treshold: 0.4\n")
    with pytest.raises(ReidctlError, match="unknown config key 'tracking.track_treshold'"):
        load_config(path)
