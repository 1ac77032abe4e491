"""Decoding throughput for `reidctl detect`'s camera readers: OpenCV or PyAV, reader threads or reader processes.

N readers each decode their own copy of a clip and hand every BGR frame to the main process, as detect's readers
hand frames to the detection loop: threads through a queue (a reference), processes through a pipe (the frame's
bytes, the least a process reader must pay). Prints total frames per second for every combination, counted once
every reader has delivered its first frame (start-up stays out).

    PYTHONPATH=$PWD python scripts/decode_bench.py --size 1080x1920 --frames 240 --readers 1,4,16 --codec mp4v
    PYTHONPATH=$PWD python scripts/decode_bench.py --clip camera.mp4 --decoders opencv,pyav --workers thread,process

PyAV (PyPI `av`) is measured where it can be imported; it is not a dependency of reidctl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from reidctl.io.cores import cores_per_reader
from reidctl.io.sources import open_source
from reidctl.io.synthetic import SCENES, write_synthetic_video

EXTENSIONS = {"mp4v": ".mp4", "MJPG": ".avi"}


def bitrate_mbit_s(path: Path) -> float:
    """The clip's bits per second of video, from its size, frame count and frame rate."""
    capture = cv2.VideoCapture(str(path))
    seconds = capture.get(cv2.CAP_PROP_FRAME_COUNT) / capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return path.stat().st_size * 8 / seconds / 1e6


def decode_opencv(path: str, readers: int):
    """As a camera reader of detect's opens the clip: its decoder on the reader's share of the cores."""
    with open_source(path, decoder_threads=cores_per_reader(readers)) as source:
        for frame in source:
            yield frame.image


def decode_pyav(path: str, readers: int):
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="bgr24")


DECODERS = {"opencv": decode_opencv, "pyav": decode_pyav}


class SteadyRate:
    """Frames counted from the moment every reader has delivered its first one: start-up (a process's imports,
    opening the file) stays out of the rate."""

    def __init__(self, readers: int):
        self.waiting_for = set(range(readers))
        self.started = None
        self.frames = 0

    def frame(self, reader: int) -> None:
        if self.started is not None:
            self.frames += 1
            return
        self.waiting_for.discard(reader)
        if not self.waiting_for:
            self.started = time.perf_counter()

    def result(self) -> tuple[int, float]:
        return self.frames, time.perf_counter() - self.started


def _thread_reader(decoder: str, reader: int, path: str, readers: int, out: queue.SimpleQueue) -> None:
    try:
        for frame in DECODERS[decoder](path, readers):
            out.put((reader, frame))
    finally:
        out.put((reader, None))


def run_threads(decoder: str, paths: list[str]) -> tuple[int, float]:
    out: queue.SimpleQueue = queue.SimpleQueue()
    threads = [threading.Thread(target=_thread_reader, args=(decoder, i, p, len(paths), out), daemon=True)
               for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
    rate, finished = SteadyRate(len(paths)), 0
    while finished < len(paths):
        reader, frame = out.get()
        if frame is None:
            finished += 1
        else:
            rate.frame(reader)
    return rate.result()


def _process_reader(decoder: str, path: str, readers: int, connection) -> None:
    for frame in DECODERS[decoder](path, readers):
        connection.send_bytes(np.ascontiguousarray(frame).data.cast("B"))  # the frame's bytes to the main process
    connection.close()


def run_processes(decoder: str, paths: list[str]) -> tuple[int, float]:
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in paths]
    workers = [context.Process(target=_process_reader, args=(decoder, p, len(paths), sender), daemon=True)
               for p, (_, sender) in zip(paths, pipes)]
    for worker in workers:
        worker.start()
    for _, sender in pipes:
        sender.close()  # the reader holds the only sending end: its exit ends the pipe
    receivers = [receiver for receiver, _ in pipes]
    index = {id(receiver): i for i, receiver in enumerate(receivers)}
    rate = SteadyRate(len(paths))
    while receivers:
        for receiver in multiprocessing.connection.wait(receivers):
            try:
                np.frombuffer(receiver.recv_bytes(), dtype=np.uint8)
                rate.frame(index[id(receiver)])
            except EOFError:
                receivers.remove(receiver)
    for worker in workers:
        worker.join()
    return rate.result()


WORKERS = {"thread": run_threads, "process": run_processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, help="clip to decode (default: a generated one)")
    parser.add_argument("--size", default="1080x1920", help="generated clip's HEIGHTxWIDTH")
    parser.add_argument("--frames", type=int, default=240, help="generated clip's frame count")
    parser.add_argument("--codec", default="mp4v", choices=sorted(EXTENSIONS), help="generated clip's codec")
    parser.add_argument("--scene", choices=SCENES, default="noise", help="generated clip's scene")
    parser.add_argument("--readers", default="1,4,16", help="reader counts, comma-separated")
    parser.add_argument("--decoders", default="opencv,pyav", help="opencv, pyav (skipped where `av` is missing)")
    parser.add_argument("--workers", default="thread,process", help="thread, process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    decoders = [d for d in args.decoders.split(",") if d]
    if "pyav" in decoders:
        try:
            import av  # noqa: F401
        except ImportError:
            print("PyAV (`av`) is not installed: measuring OpenCV only")
            decoders.remove("pyav")
    with tempfile.TemporaryDirectory() as scratch:
        clip = args.clip
        if clip is None:
            height, width = (int(v) for v in args.size.lower().split("x"))
            clip = write_synthetic_video(Path(scratch) / f"clip{EXTENSIONS[args.codec]}", args.frames, (height, width),
                                         scene=args.scene)
        results, bitrate = [], bitrate_mbit_s(clip)
        print(f"{clip} ({bitrate:.1f} Mbit/s): {platform.node()}, {os.cpu_count()} CPUs, OpenCV {cv2.__version__}",
              flush=True)
        for readers in (int(n) for n in args.readers.split(",")):
            for decoder in decoders:
                for workers in args.workers.split(","):
                    frames, seconds = WORKERS[workers](decoder, [str(clip)] * readers)
                    results.append({"readers": readers, "decoder": decoder, "workers": workers, "frames": frames,
                                    "seconds": seconds, "fps": frames / seconds})
                    print(f"{readers:3d} readers  {decoder:6s}  {workers:7s}  {frames:6d} frames  "
                          f"{frames / seconds:8.1f} FPS", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"clip": str(clip), "clip_mbit_s": bitrate, "cpus": os.cpu_count(),
                                         "opencv": cv2.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
