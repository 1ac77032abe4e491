"""The reference deployment guide's answer, which `reidctl recommend` gives without a bench result: its decision tree
and its Summary table, quoted as the guide has them (Tesla V100 figures, not this machine's; the backend names are
the guide's words, not the registry's).
"""

from __future__ import annotations

LOW_LATENCY_MS = 30.0  # the reference's "Need low latency (< 30ms)? -> Triton"

# The reference guide's "Summary" table: scenario -> (backend, reason).
SUMMARY = {
    "Development": ("pytorch", "Easy debugging"),
    "Single camera (< 20 FPS)": ("pytorch", "Simple setup"),
    "Single camera (20-30 FPS)": ("tensorrt", "Best single-stream performance"),
    "2-3 cameras": ("tensorrt", "Good balance"),
    "4+ cameras": ("triton", "Dynamic batching advantage"),
    "Low latency required": ("triton", "CUDA Graphs optimization"),
    "Production deployment": ("triton", "Monitoring, versioning, scalability"),
}


def decision_tree(cameras: int, fps: float, latency_ms: float) -> str:
    """The reference's decision tree: a low-latency budget first, then camera count and FPS; a SUMMARY scenario."""
    if latency_ms < LOW_LATENCY_MS:
        return "Low latency required"
    if cameras == 1:
        return "Single camera (< 20 FPS)" if fps < 20 else "Single camera (20-30 FPS)"
    return "2-3 cameras" if cameras <= 3 else "4+ cameras"
