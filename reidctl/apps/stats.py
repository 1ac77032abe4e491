"""Latency and batch statistics shared by the benchmark, the recommender and detect.

Conventions, fixed so that numbers compare across runs and machines:
  percentiles: ``numpy.percentile`` with linear interpolation between the two nearest ranks
               (``method="linear"``, NumPy's default, also what Excel's PERCENTILE.INC does);
  std:         population standard deviation (``ddof=0``): the spread of the measured samples themselves;
  fps:         1 / mean latency, the rate one stream gets when its requests are served back to back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    count: int
    avg_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    fps: float

    @classmethod
    def from_samples(cls, seconds: Sequence[float]) -> LatencySummary:
        """Summarise latencies given in seconds; at least one sample is required."""
        samples_ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        if samples_ms.size == 0:
            raise ValueError("no latency samples to summarise")
        p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99], method="linear")
        avg = float(samples_ms.mean())
        return cls(
            count=int(samples_ms.size),
            avg_ms=avg,
            min_ms=float(samples_ms.min()),
            max_ms=float(samples_ms.max()),
            std_ms=float(samples_ms.std(ddof=0)),
            p50_ms=float(p50),
            p95_ms=float(p95),
            p99_ms=float(p99),
            fps=1000.0 / avg,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencySummary:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def mean_size(counts: Mapping[int, int] | None) -> float | None:
    """The mean size of batches counted as {size: how many}; None without any."""
    total = sum(counts.values()) if counts else 0
    return sum(int(size) * count for size, count in counts.items()) / total if total else None
