"""Write a short synthetic clip for demos and benchmarks.

    python scripts/make_clip.py OUT.avi [--frames N] [--size HxW] [--fps F]
"""

import argparse
from pathlib import Path

from reidctl.io.synthetic import write_synthetic_video

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("output", type=Path, help="video file to write (.avi or .mp4)")
parser.add_argument("--frames", type=int, default=30, help="number of frames")
parser.add_argument("--size", default="640x640", help="frame HEIGHTxWIDTH")
parser.add_argument("--fps", type=float, default=30.0, help="frame rate stored in the file")
args = parser.parse_args()
height, width = (int(v) for v in args.size.lower().split("x"))
write_synthetic_video(args.output, args.frames, (height, width), args.fps)
print(f"wrote {args.output} ({args.frames} frames, {width}x{height})")
