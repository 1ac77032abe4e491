"""Write synthetic clips for demos and benchmarks (codec from the extension: .mp4 MPEG-4, .avi MJPG).

    PYTHONPATH=$PWD python scripts/make_clip.py OUT.avi [--frames N] [--size HxW] [--fps F]
    PYTHONPATH=$PWD python scripts/make_clip.py clips/cam.mp4 --size 1080x1920 --frames 900 --count 16  # cam01..16.mp4
    PYTHONPATH=$PWD python scripts/make_clip.py clips/cam.mp4 --size 1080x1920 --scene camera  # a still background
"""

import argparse
import shutil
from pathlib import Path

from reidctl.io.synthetic import SCENES, write_synthetic_video

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("output", type=Path, help="video file to write (.avi or .mp4)")
parser.add_argument("--frames", type=int, default=30, help="number of frames")
parser.add_argument("--size", default="640x640", help="frame HEIGHTxWIDTH")
parser.add_argument("--fps", type=float, default=30.0, help="frame rate stored in the file")
parser.add_argument("--scene", choices=SCENES, default="noise",
                    help="noise: a fresh noisy background every frame (costly to decode); camera: a still background")
parser.add_argument("--count", type=int, default=1, help="clips to write: OUT's name numbered 01, 02, ... (copies)")
args = parser.parse_args()
height, width = (int(v) for v in args.size.lower().split("x"))
if args.count > 1:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    paths = [args.output.with_name(f"{args.output.stem}{i:02d}{args.output.suffix}") for i in range(1, args.count + 1)]
else:
    paths = [args.output]
write_synthetic_video(paths[0], args.frames, (height, width), args.fps, args.scene)
for path in paths[1:]:
    shutil.copyfile(paths[0], path)  # one encode; every camera reads (and decodes) its own file
for path in paths:
    print(f"wrote {path} ({args.frames} frames, {width}x{height}, {args.fps:g} FPS)")
