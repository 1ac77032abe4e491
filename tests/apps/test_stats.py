"""Latency statistics on samples whose answers are known by hand."""

import math

import pytest

from reidctl.apps.stats import LatencySummary


def test_percentiles_interpolate_linearly_and_std_is_population():
    summary = LatencySummary.from_samples([0.010, 0.020, 0.030, 0.040])
    assert summary.count == 4
    assert summary.avg_ms == pytest.approx(25.0)
    assert (summary.min_ms, summary.max_ms) == pytest.approx((10.0, 40.0))
    # rank = (n - 1) * q: 1.5 -> between 20 and 30; 2.85 -> 30 + 0.85 * 10; 2.97 -> 30 + 0.97 * 10
    assert summary.p50_ms == pytest.approx(25.0)
    assert summary.p95_ms == pytest.approx(38.5)
    assert summary.p99_ms == pytest.approx(39.7)
    # population std sqrt(125) = 11.18 (the sample std would be 12.91)
    assert summary.std_ms == pytest.approx(math.sqrt(125.0))
    assert summary.fps == pytest.approx(40.0)


def test_one_to_hundred_milliseconds():
    summary = LatencySummary.from_samples([ms / 1000 for ms in range(100, 0, -1)])  # order must not matter
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.std_ms == pytest.approx(math.sqrt((100**2 - 1) / 12))


def test_single_sample_has_no_spread_and_round_trips():
    summary = LatencySummary.from_samples([0.005])
    assert summary.std_ms == 0.0
    assert summary.p50_ms == summary.p99_ms == summary.min_ms == summary.max_ms == pytest.approx(5.0)
    assert LatencySummary.from_dict(summary.to_dict()) == summary


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        LatencySummary.from_samples([])
