"""How fast `reidctl --help` and every `reidctl COMMAND --help` answer, and how much memory they take; and what a
bench client process takes once it has imported what it runs (reidctl.apps.clients' CLIENT_PROCESS_BYTES).

Each runs in a fresh interpreter, as a user's shell would start it; the table shows the median wall time of
``--repeat`` runs and the peak resident memory. Goal for the commands: <= 0.5 s and <= 100 MiB each on a 2-core CPU
machine.

    PYTHONPATH=$PWD python scripts/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "detect", "export-onnx", "build-engine", "setup-triton", "bench", "recommend"]
# A bench client process's imports: one that only sends frames (FrameSender) and one that runs a Detector over the
# Triton runner (a server model whose NMS runs on the client), which brings torch.
CLIENT_IMPORTS = {
    "client, frames only": "import reidctl.apps.clients, reidctl.triton.requests",
    "client with a Detector": "import reidctl.apps.clients, reidctl.core.detector, reidctl.backends.triton",
}


def measure(args: list[str], repeat: int) -> tuple[float, float]:
    """Median seconds and peak MiB of running ``args``."""
    times, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: ru_maxrss in KiB on Linux
        times.append(time.perf_counter() - start)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            sys.exit(f"{' '.join(args)} exited {child.returncode}")
        peaks.append(usage.ru_maxrss / 1024)
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    repeat = parser.parse_args().repeat
    print(f"{'command':<28} {'median s':>9} {'peak MiB':>9}")
    for command in COMMANDS:
        seconds, mib = measure([sys.executable, "-m", "reidctl", *([command] if command else []), "--help"], repeat)
        print(f"{('reidctl ' + command).strip() + ' --help':<28} {seconds:>9.3f} {mib:>9.1f}")
    for name, imports in CLIENT_IMPORTS.items():
        seconds, mib = measure([sys.executable, "-c", imports], repeat)
        print(f"{name:<28} {seconds:>9.3f} {mib:>9.1f}")


if __name__ == "__main__":
    main()
