"""The PyTorch runner's model step (normalise + YOLOX + decode, one CUDA graph replay) per batch size on a GPU, with
cuDNN's algorithm search on or off and with or without torch.compile: what kernel choices are worth.

Each variant belongs in a process of its own (cuDNN's choices and torch.compile's settings are per process).
Prints one JSON line: milliseconds per batch and frames per second for each batch size.
Usage: PYTHONPATH=$PWD python scripts/model_step_bench.py [--compile] [--freezing] [--cudnn-benchmark on|off] \\
         [--model-type mot17]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from reidctl.backends.pytorch import PyTorchRunner
from reidctl.config import load_config, override
from reidctl.models.loader import load_detection_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default mode)")
    parser.add_argument("--freezing", action="store_true", help="with --compile: inductor's weight freezing")
    parser.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on", help="cuDNN's algorithm search")
    parser.add_argument("--model-type", default="mot17", help="YOLOX size or ByteTrack layout (untrained weights)")
    parser.add_argument("--sizes", default="1,2,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--iters", type=int, default=100, help="timed replays per batch size")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: needs a CUDA GPU")
    config = override(load_config(None), model_type=args.model_type, device="cuda")
    model, spec = load_detection_model(config.detection, warn=lambda message: None)
    device = torch.device("cuda:0")
    started = time.perf_counter()
    runner = PyTorchRunner(model, spec, device, tuple(config.detection.input_size), fp16=True, compile=False)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"  # after the runner, which turns it on
    if args.compile:
        import torch._inductor.config as inductor

        inductor.freezing = args.freezing
        runner.module = torch.compile(runner.module)
    step_ms = {}
    for size in map(int, args.sizes.split(",")):
        batch = torch.zeros((size, *config.detection.input_size, 3), dtype=torch.uint8, device=device)
        for _ in range(5):  # the capture (and compilation) of this batch size
            runner.infer(batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.iters):
            runner.infer(batch)
        torch.cuda.synchronize()
        step_ms[size] = round((time.perf_counter() - start) / args.iters * 1000, 3)
    print(json.dumps({"gpu": torch.cuda.get_device_name(device), "compile": args.compile, "freezing": args.freezing,
                      "cudnn_benchmark": args.cudnn_benchmark, "setup_s": round(time.perf_counter() - started, 1),
                      "ms": step_ms, "fps": {size: round(size * 1000 / ms, 1) for size, ms in step_ms.items()}}))


if __name__ == "__main__":
    main()
