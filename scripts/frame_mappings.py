"""How often the allocator maps and unmaps a block of a camera frame's size on its own during a `reidctl detect` run,
as shipped and with `frames_from_the_heap` undone (scripts/reidctl_variant.py --frames-mapped). Each such unmapping
changes the page tables under every thread of the run (docs/PERFORMANCE.md, figures behind choices).

Runs each detect under strace (Linux; `strace` on PATH) on generated clips, YOLOX-nano untrained on the CPU, and
counts the mmap and munmap calls whose length is a frame's size (up to 1 MiB more: the allocator's header and
pages, the block freed first).

    PYTHONPATH=$PWD python scripts/frame_mappings.py --size 1080x1920 --cameras 2 --frames 30 [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from reidctl.io.synthetic import write_synthetic_video

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"as shipped": (), "frames mapped on their own": ("--frames-mapped",)}
SLACK = 1 << 20
CALL = re.compile(r"\b(mmap|munmap)\((?:NULL|0x[0-9a-f]+), (\d+)")


def frame_sized_calls(trace: Path, frame_bytes: int) -> dict[str, int]:
    counts = {"mmap": 0, "munmap": 0}
    for line in trace.read_text().splitlines():
        match = CALL.search(line)
        if match and frame_bytes <= int(match.group(2)) <= frame_bytes + SLACK:
            counts[match.group(1)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1080x1920", help="the cameras' HEIGHTxWIDTH")
    parser.add_argument("--cameras", type=int, default=2, help="cameras in the run")
    parser.add_argument("--frames", type=int, default=30, help="frames per camera")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        sys.exit("error: strace is not installed")
    height, width = (int(v) for v in args.size.lower().split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        clip = write_synthetic_video(Path(scratch) / "cam.mp4", args.frames, (height, width), scene="camera")
        for variant, options in VARIANTS.items():
            trace = Path(scratch) / "trace.txt"
            command = ["strace", "-f", "-e", "trace=mmap,munmap", "-o", str(trace), sys.executable,
                       str(ROOT / "scripts" / "reidctl_variant.py"), *options, "--", "detect",
                       *[str(clip)] * args.cameras, "--device", "cpu", "--model-type", "nano", "--test-size",
                       "128x128", "--realtime", "--mot", str(Path(scratch) / "mot"), "--no-progress"]
            run = subprocess.run(command, capture_output=True, text=True, check=False,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"error: detect under strace failed: {last}")
            counts = results[variant] = frame_sized_calls(trace, height * width * 3)
            print(f"{variant:28s} frame-sized mmap {counts['mmap']:4d}  munmap {counts['munmap']:4d}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "cameras": args.cameras, "frames": args.frames,
                                         "calls": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
