"""The bench files: the JSON record, and the plot of throughput and latency percentiles versus camera count."""

from __future__ import annotations

import json
from pathlib import Path

from reidctl.apps.bench_report import DEFAULT_BENCH_PATH, BenchReport, plot_path_for
from reidctl.io.atomic import atomic_path, write_text_atomic


def write_plot(report: BenchReport, path: Path) -> None:
    """Throughput and latency percentiles versus camera count, one line per backend, mode and load (closed or open
    loop: an open-loop run's throughput is what it served at its camera rate)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (throughput_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for backend in report.backends:
        for mode, load in dict.fromkeys((stream.mode, stream.load) for stream in backend.multi_stream):
            streams = [s for s in backend.multi_stream if (s.mode, s.load) == (mode, load)]
            streams.sort(key=lambda s: s.cameras)
            cameras = [s.cameras for s in streams]
            rate = f" at {streams[0].fps_per_camera:g} FPS/camera" if load == "open" else " (saturation)"
            color, label = next(colors), f"{backend.name} {mode}{rate}"
            throughput_axis.plot(cameras, [s.throughput_fps for s in streams], "o-", color=color, label=label)
            for percentile, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
                values = [getattr(s.latency, f"{percentile}_ms") for s in streams]
                latency_axis.plot(
                    cameras, values, style, marker="o", color=color, label=label if percentile == "p99" else None
                )
    throughput_axis.set(title="Total throughput", xlabel="cameras", ylabel="frames / s")
    latency_axis.set(title="Latency per request (P50 dotted, P95 dashed, P99 solid)", xlabel="cameras", ylabel="ms")
    counts = sorted({s.cameras for b in report.backends for s in b.multi_stream})
    for axis in (throughput_axis, latency_axis):
        axis.grid(alpha=0.3)
        axis.set_xticks(counts)
        if axis.lines:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "no backend measured", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(f"reidctl bench on {report.environment['gpu']['name']} ({report.created})")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_report(report: BenchReport, path: Path = DEFAULT_BENCH_PATH) -> Path:
    """The JSON first (the record), then the plot beside it; both atomically. Returns the plot's path."""
    write_text_atomic(Path(path), json.dumps(report.to_dict(), indent=2))
    plot = plot_path_for(path)
    write_plot(report, plot)
    return plot
