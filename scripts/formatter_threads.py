"""The output stage's formatting process just after it is ready: its threads and the CPU it uses in the next
half second, started with one-thread BLAS and OpenMP pools (as reidctl does, ONE_THREAD_POOLS) and without.

NumPy's OpenBLAS starts a thread per core at import, each spinning a while; the child works on small arrays in one
thread, and those spinning threads would take cores from the cameras' readers as a run starts.

    PYTHONPATH=$PWD python scripts/formatter_threads.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from reidctl.io import formatter
from reidctl.io.atomic import atomic_path
from reidctl.io.writers import JSONLWriter, MOTWriter

WATCH_S = 0.5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def measure(pools: dict[str, str]) -> dict:
    """One child started with ``pools`` in its environment: its threads once ready and after WATCH_S, and the CPU
    seconds it used in between."""
    formatter.ONE_THREAD_POOLS = pools
    child = formatter.FormattingProcess([MOTWriter, JSONLWriter])
    try:
        pid = child.pid
        if pid is None:
            raise SystemExit("error: the formatting process did not start")
        cpu, ready_threads = cpu_seconds(pid), threads(pid)
        time.sleep(WATCH_S)
        return {"threads_ready": ready_threads, "threads_after": threads(pid),
                "cpu_seconds": round(cpu_seconds(pid) - cpu, 3)}
    finally:
        child.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="children started per variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    variants = {"one_thread_pools": dict(formatter.ONE_THREAD_POOLS), "default_pools": {}}
    results = {name: [measure(pools) for _ in range(args.repeat)] for name, pools in variants.items()}
    print(f"{os.cpu_count()} CPUs; the formatting process in the {WATCH_S} s after it was ready:")
    for name, runs in results.items():
        print(f"  {name:<17} threads {[r['threads_after'] for r in runs]}, CPU s {[r['cpu_seconds'] for r in runs]}"
              f" (median {statistics.median(r['cpu_seconds'] for r in runs):.3f})")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"cpus": os.cpu_count(), "watch_s": WATCH_S, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
