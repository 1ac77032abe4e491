#!/usr/bin/env python3
"""Run one measurement suite of docs/PERFORMANCE.md: scripts/perf.py SUITE OUT_DIR [options].

A suite is a declared list of steps (name, time bound, command). Each step runs the reidctl CLI
(`python -m reidctl ...`) or a script of scripts/ with this interpreter, from the repository root with the tree on
PYTHONPATH, as a user would. Its output goes to OUT_DIR/<step>.log; it is ended after its bound, and a failed step
does not stop the others. A step that needs what this machine lacks (GPUs, TensorRT) is skipped, with the reason.

Fixtures are made once in the work directory and reused by later runs: the generated clips (scripts/make_clip.py),
the load checkpoints (scripts/make_load_checkpoints.py) and config files. The bundled Triton server is a fixture of
the steps that talk to it: `reidctl setup-triton --repository R ... --start` before them, `--stop` after them, on a
failure or Ctrl-C too. At the end a table of every step and its headline figures is printed; OUT_DIR/summary.json
holds the same (the suite's current result, rewritten after each step).

Standard library only: it runs on the GPU machine's own python3 before anything else is set up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
LOADS = ("idle", "crowd", "worst")
STOP_TIMEOUT_S = 120
KILL_GRACE_S = 10
# The children import reidctl and the scripts' modules from this tree, whatever is installed.
CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
GPU_PROBE = ("import json, torch; "
             "print(json.dumps([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]))")


@dataclass
class Step:
    """One bounded command; ``output`` is the JSON result the summary takes its figures from."""

    name: str
    timeout_s: int
    argv: list[str]
    output: Path | None = None
    stdout: Path | None = None  # the command prints its result: stdout goes here, stderr to the log
    needs_gpus: int = 0
    needs_module: str | None = None  # e.g. tensorrt, which cannot be installed on every machine
    needs_program: str | None = None  # e.g. py-spy, a measuring tool that reidctl does not need


@dataclass
class Served:
    """Steps that talk to the bundled Triton server: it is started with ``setup_args`` before them and stopped after."""

    name: str
    repository: Path
    setup_args: list[str]
    steps: list[Step]
    needs_gpus: int = 0
    timeout_s: int = 300  # a first start compiles the server model: 60-105 s on an H100 or H200


@dataclass
class Settings:
    cameras: str = "16"  # camera counts of bench's runs, comma-separated; the generated clips: the largest
    frames: int = 240  # frames per generated clip, at 30 FPS
    size: str = "1080x1920"  # generated clips' HEIGHTxWIDTH
    scene: str = "noise"  # generated clips' scene (reidctl.io.synthetic.SCENES)
    device: str = "cuda"
    model_args: str = "--model-type mot17"
    loads: str = "idle,crowd,worst"
    iters: int = 300
    warmup: int = 30


def parse_wrapper_args(parser: argparse.ArgumentParser, passed: str) -> tuple[argparse.Namespace, list[str]]:
    """A wrapper script's own options, and the command line after -- that it passes on (``passed`` names it)."""
    parser.epilog = f"then --, then {passed}"
    own, rest = (sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]) \
        if "--" in sys.argv else (sys.argv[1:], [])
    args = parser.parse_args(own)
    if not rest:
        parser.error(f"give {passed} after --")
    return args, rest


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in a command line."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def find_program(name: str) -> str | None:
    """A program on PATH or among this interpreter's scripts (where pip installs a wheel's programs)."""
    return shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))


class Context:
    """What a suite's steps are made of: the settings, the result and work directories, and the fixtures."""

    def __init__(self, settings: Settings, out_dir: Path, work_dir: Path, checkpoints_dir: Path | None):
        self.settings = settings
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.checkpoints_dir = checkpoints_dir
        self.model = shlex.split(settings.model_args)
        self.detection = ["--device", settings.device, *self.model]
        self.iterations = ["--iters", str(settings.iters), "--warmup", str(settings.warmup)]
        self.camera_count = max(int(n) for n in settings.cameras.split(","))
        self.loads = settings.loads.split(",")
        self.gpus_needed = 1 if settings.device.startswith("cuda") else 0  # by a step on --device
        # torch.compile on a CPU takes minutes and measures nothing the GPU figures need.
        self.compiles = self.gpus_needed > 0
        self.fixtures: dict[str, Step] = {}  # made before the suite's steps, once each

    @staticmethod
    def reidctl(*args, wrapper: tuple = ()) -> list[str]:
        """A reidctl command; ``wrapper``: a script of scripts/ and its options, which runs the command itself
        (reidctl_variant: with a choice of the code undone; gil_profile: sampled for the interpreter lock)."""
        if wrapper:
            return Context.script(*wrapper, "--", *args)
        return [sys.executable, "-m", "reidctl", *map(str, args)]

    @staticmethod
    def script(name: str, *args) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)]

    def needs(self, gpus: int | None) -> int:
        """GPUs a step needs: as given, else those of a step on --device."""
        return self.gpus_needed if gpus is None else gpus

    def result(self, name: str) -> Path:
        return self.out_dir / name

    def repository(self, name: str) -> Path:
        return self.work_dir / "repositories" / name

    def clips(self, count: int, size: str | None = None, suffix: str = ".mp4") -> list[Path]:
        """``count`` copies of a generated clip (.mp4 MPEG-4, .avi MJPG), written unless a run before left them."""
        size = size or self.settings.size
        directory = self.work_dir / "clips" / (f"{count}_{size}_{self.settings.frames}f_{self.settings.scene}"
                                               f"{suffix.replace('.', '_')}")
        paths = [directory / f"cam{i:02d}{suffix}" for i in range(1, count + 1)]
        if not all(path.is_file() for path in paths):
            target = paths[0] if count == 1 else directory / f"cam{suffix}"  # make_clip numbers several copies
            self.fixtures.setdefault(directory.name, Step(
                f"clips_{directory.name}", 240, self.script(
                    "make_clip", target, "--size", size, "--fps", 30, "--frames", self.settings.frames,
                    "--scene", self.settings.scene, "--count", count)))
        return paths

    def checkpoint(self, load: str, model: list[str] | None = None) -> Path:
        """The ByteTrack-format checkpoint that puts ``load`` on NMS: from --checkpoints, or written once; ``model``:
        model options other than the settings' (--model-type, --test-size)."""
        if self.checkpoints_dir and model is None:  # the given checkpoints are of the settings' model
            found = sorted(self.checkpoints_dir.glob(f"*_{load}.pth.tar"))
            if not found:
                sys.exit(f"error: {self.checkpoints_dir} has no *_{load}.pth.tar")
            return found[0]
        # make_load_checkpoints.py takes the model's type and input size as --model-type and --size H W.
        model = self.model if model is None else model
        model_type = option_value(model, "--model-type") or "mot17"
        test_size = option_value(model, "--test-size") or "640x640"
        directory = self.work_dir / "loads" / f"{model_type}_{test_size}"
        path = directory / f"{model_type.lower()}_{load}.pth.tar"
        if not path.is_file():
            fixture = Step(f"load_checkpoints_{directory.name}", 300, self.script(
                "make_load_checkpoints", "--output-dir", directory, "--model-type", model_type,
                "--size", *test_size.lower().split("x")))
            self.fixtures.setdefault(directory.name, fixture)
        return path

    def config(self, name: str, **detection) -> Path:
        """A config file with these detection settings (written as JSON, which YAML reads as it is)."""
        path = self.work_dir / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"detection": detection}, indent=2, default=str) + "\n")
        return path

    def compile_config(self) -> Path:
        return self.config("compile", compile=self.compiles)

    def compiled(self, load: str) -> list:
        """The model options of an in-process run at ``load``: compiled where there is a GPU, its load checkpoint."""
        return ["-c", self.compile_config(), *self.detection, "--model", self.checkpoint(load)]

    def detect(self, name: str, clips: list[Path], *options, outputs: tuple[str, ...] = ("mot",),
               timeout_s: int = 150, needs_gpus: int | None = None, wrapper: tuple = ()) -> Step:
        """`reidctl detect` of the clips as cameras, its summary in OUT_DIR/NAME.json; ``outputs``: mot, jsonl."""
        written = self.work_dir / "outputs" / name
        paths = {"mot": written / ("mot" if len(clips) > 1 else "mot.txt"), "jsonl": written / "detections.jsonl"}
        output_args = [arg for kind in outputs for arg in (f"--{kind}", paths[kind])] or ["--no-output"]
        summary = self.result(f"{name}.json")
        argv = self.reidctl("detect", *clips, *options, *output_args, "--no-progress", "--summary-json", summary,
                            wrapper=wrapper)
        return Step(name, timeout_s, argv, output=summary, needs_gpus=self.needs(needs_gpus))

    def realtime(self, name: str, clips: list[Path], *options, **step) -> Step:
        """`detect` of the clips as cameras at their frame rate, with the outputs a deployment writes (MOT, JSONL)."""
        return self.detect(name, clips, *options, "--realtime", outputs=("mot", "jsonl"), **step)

    def flat_out(self, name: str, clips: list[Path], *options, **step) -> Step:
        """`detect` of the clips as cameras as fast as they decode, with the outputs a deployment writes (MOT and
        JSONL)."""
        return self.detect(name, clips, *options, outputs=("mot", "jsonl"), **step)

    def timeline(self, name: str, clips: list[Path], *options) -> Step:
        """`reidctl detect` of the clips with --mot and --jsonl through scripts/start_timeline.py: its first seconds
        tenth by tenth in OUT_DIR/NAME/timeline.json, its summary in OUT_DIR/NAME/summary.json."""
        written, out = self.work_dir / "outputs" / name, self.result(name)
        argv = self.script("start_timeline", out, "--", *clips, *options, "--mot", written / "mot",
                           "--jsonl", written / "detections.jsonl", "--no-progress",
                           "--summary-json", out / "summary.json")
        return Step(name, 150, argv, output=out / "summary.json", stdout=self.result(f"{name}.txt"),
                    needs_gpus=self.needs(None))

    def bench(self, name: str, *options, timeout_s: int = 200, needs_gpus: int | None = None,
              wrapper: tuple = ()) -> Step:
        """`reidctl bench`, its report in OUT_DIR/NAME.json."""
        report = self.result(f"{name}.json")
        argv = self.reidctl("bench", *options, "--output", report, "--no-progress", wrapper=wrapper)
        return Step(name, timeout_s, argv, output=report, needs_gpus=self.needs(needs_gpus))

    def detect_frames(self, cameras: list[Path]) -> list[str]:
        """bench's options to play the first camera's clip as many cameras, as many frames as detect reads of them
        all, so that flat out both are timed as long."""
        return ["--source", str(cameras[0]), "--iters", str(len(cameras) * self.settings.frames), "--warmup",
                str(self.settings.warmup), "--cameras", str(len(cameras))]

    def recommend(self, name: str, *options, timeout_s: int = 60, needs_gpus: int = 0) -> Step:
        """`reidctl recommend`, its answer in OUT_DIR/NAME.json."""
        answer = self.result(f"{name}.json")
        return Step(name, timeout_s, self.reidctl("recommend", *options, "--json", answer), output=answer,
                    needs_gpus=needs_gpus)

    def triton(self, name: str, steps: list[Step], *setup_args, needs_gpus: int | None = None) -> Served:
        return Served(name, self.repository(name), [*map(str, setup_args)], steps,
                      needs_gpus=self.needs(needs_gpus))


# The suites. Each builds its steps from the settings; the fixtures it asks for are made first.

# pipeline-pytorch's real-time runs per load: without tracking, and at the crowd load with --track too (the worst
# load's row for every anchor is more than real time can write).
REAL_TIME_TRACKING = {"idle": ((),), "crowd": ((), ("--track",))}
# pipeline-pytorch's real-time runs with a choice of the code undone (scripts/reidctl_variant.py), per load: name, the
# variant's options, tracking; each is the pair of the same run with the defaults
UNDONE = {"idle": (("setup_collected", ("--setup-collected",), ()),
                   ("opencv_threads_as_is", ("--opencv-threads-as-is",), ())),
          "crowd": (("opencv_threads_as_is", ("--opencv-threads-as-is",), ()),
                    ("switch_interval_5ms", ("--switch-interval-ms", 5), ()),
                    ("sleeping_waits", ("--sleeping-waits",), ("--track",)))}
# pipeline-pytorch's runs sampled for the interpreter lock (scripts/gil_profile.py) once the cameras have started:
# mode, detect's options, the sampled window in seconds (a flat-out run of the clips lasts ~4 s on an H200)
LOCK_PROFILED = (("rt", ("--realtime",), 5), ("fast", (), 2))


# pipeline-triton's runs with the bundled server moved onto this many whole cores of its own (the highest numbered)
SERVER_CORES = (4, 2)
# real-time runs of both pipeline suites beside this many processes spinning on the CPU: a slow spell made on purpose
BUSY_CORES = (8, 16)
# ... and, beside the fewer of them, with detect and the bundled server at this niceness: ahead of the host's other work
DEPLOYMENT_NICENESS = -10


def undone_by(*options) -> tuple:
    """The wrapper that runs a reidctl command with these scripts/reidctl_variant.py options; none: as shipped."""
    return ("reidctl_variant", *options) if options else ()


def pipeline_pytorch(ctx: Context) -> list[Step | Served]:
    cameras = ctx.clips(ctx.camera_count)
    # each real-time run with the defaults, then with one batch in flight on the GPU, then with the readers yielding
    # the CPU (niceness 10), then with each camera holding two frames, then with a 2 ms window for fuller batches
    variants = {"": ctx.compile_config(),
                "_in_flight_1": ctx.config("compile_in_flight_1", compile=ctx.compiles, batches_in_flight=1),
                "_readers_niceness_10": ctx.config("compile_readers_niceness_10", compile=ctx.compiles,
                                                   reader_niceness=10),
                "_camera_buffer_2": ctx.config("compile_camera_buffer_2", compile=ctx.compiles, camera_buffer=2),
                "_batch_window_2": ctx.config("compile_batch_window_2", compile=ctx.compiles, batch_window_ms=2)}
    # what the host's cores decode with nothing else running: the cameras' readers on one clip, threads as detect's
    steps: list[Step | Served] = [
        Step("decode_readers", 300, ctx.script("decode_bench", "--clip", cameras[0], "--readers", ctx.camera_count,
                                               "--decoders", "opencv", "--workers", "thread",
                                               "--json", ctx.result("decode_readers.json")))]
    for load in ctx.loads:
        detection = ctx.compiled(load)
        detect = ["--backend", "pytorch", *detection]
        steps.append(ctx.bench(f"bench_{load}", "--backends", "pytorch", *detection, *ctx.detect_frames(cameras)))
        if load == "worst":  # a row for every anchor: writing them is the limit, so this one runs without outputs
            steps.append(ctx.detect(f"detect_pytorch_fast_{load}_nooutput", cameras, *detect, outputs=()))
        for tracking in REAL_TIME_TRACKING.get(load, ()):
            name = f"detect_pytorch_rt_{load}" + ("_track" if tracking else "")
            for suffix, config in variants.items():
                steps.append(ctx.realtime(name + suffix, cameras, "--backend", "pytorch", "-c", config,
                                          *ctx.detection, "--model", ctx.checkpoint(load), *tracking))
        for variant, undone, tracking in UNDONE.get(load, ()):
            name = f"detect_pytorch_rt_{load}{'_track' if tracking else ''}_{variant}"
            steps.append(ctx.realtime(name, cameras, *detect, *tracking, wrapper=undone_by(*undone)))
        if load in REAL_TIME_TRACKING:  # the same real-time run beside busy cores, then its first seconds traced
            for busy in BUSY_CORES:
                steps.append(ctx.realtime(f"detect_pytorch_rt_{load}_busy_cores_{busy}", cameras, *detect,
                                          wrapper=undone_by("--busy-cores", busy)))
            busy = BUSY_CORES[0]
            steps.append(ctx.realtime(f"detect_pytorch_rt_{load}_niceness_{DEPLOYMENT_NICENESS}_busy_cores_{busy}",
                                      cameras, *detect,
                                      wrapper=undone_by("--niceness", DEPLOYMENT_NICENESS, "--busy-cores", busy)))
            steps.append(ctx.timeline(f"timeline_pytorch_rt_{load}", cameras, *detect, "--realtime"))
            for mode, options, seconds in LOCK_PROFILED:
                name = f"lock_profile_{mode}_{load}"
                shares = ctx.result(f"{name}_lock.json")
                profile = ("gil_profile", "--seconds", seconds, "--json", shares)
                step = ctx.detect(name, cameras, *detect, *options, outputs=("mot", "jsonl"), wrapper=profile)
                steps.append(dataclasses.replace(step, output=shares, needs_program="py-spy"))
        steps.append(ctx.flat_out(f"detect_pytorch_fast_{load}", cameras, *detect))
    return steps


def pipeline_triton(ctx: Context) -> list[Step | Served]:
    cameras = ctx.clips(ctx.camera_count)
    groups: list[Step | Served] = []
    for load in ctx.loads:
        model = [*ctx.model, "--model", ctx.checkpoint(load)]
        detect = ["--backend", "triton", "--device", ctx.settings.device, *model]
        # frames through the host's shared memory instead of the server's GPU memory (the default, "auto")
        system_inputs = ctx.config("triton_system_inputs", triton={"shared_memory": "system"})
        # bench through the server on detect's frames, its cameras spread over 4 client processes (the most it got),
        # by the default and through the host's shared memory
        bench = ["--backends", "triton", *model, *ctx.detect_frames(cameras),
                 "--client-processes", min(4, ctx.camera_count)]
        steps = [ctx.bench(f"bench_triton_{load}", *bench),
                 ctx.bench(f"bench_triton_{load}_system_inputs", *bench, "-c", system_inputs),
                 ctx.realtime(f"detect_triton_rt_{load}", cameras, *detect),
                 # the same cameras in process (compiled) while the server idles: with --rounds, the neighbour of each
                 # run through the server, so that both meet the same spell of the host
                 ctx.realtime(f"detect_pytorch_rt_{load}_beside_idle_server", cameras, "--backend", "pytorch",
                              *ctx.compiled(load))]
        # more and fewer requests in flight from detect's batch loops than its default 2, the readers yielding the
        # CPU (niceness 10), each camera holding two frames, and a 2 ms window for fuller requests
        in_flight = {f"_in_flight_{n}": ctx.config(f"triton_in_flight_{n}", triton={"max_in_flight": n})
                     for n in (3, 4, 1)}
        variants = dict(in_flight)
        variants["_readers_niceness_10"] = ctx.config("triton_readers_niceness_10", reader_niceness=10)
        variants["_camera_buffer_2"] = ctx.config("triton_camera_buffer_2", camera_buffer=2)
        variants["_system_inputs"] = system_inputs
        window = ctx.config("triton_batch_window_2", batch_window_ms=2)
        variants["_batch_window_2"] = window
        for suffix, config in variants.items():
            steps.append(ctx.realtime(f"detect_triton_rt_{load}{suffix}", cameras, *detect, "-c", config))
        # each request a blocking call in its batch loop's thread; OpenCV's own thread counts in the readers
        # (scripts/reidctl_variant.py)
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_blocking_requests", cameras, *detect,
                                  wrapper=undone_by("--blocking-requests")))
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_opencv_threads_as_is", cameras, *detect,
                                  wrapper=undone_by("--opencv-threads-as-is")))
        # the server on whole cores of its own, detect on the others (setup-triton --start --cpus)
        for cores in SERVER_CORES:
            steps.append(ctx.realtime(f"detect_triton_rt_{load}_server_cores_{cores}", cameras, *detect,
                                      wrapper=undone_by("--server-cores", cores)))
        for busy in BUSY_CORES:
            steps.append(ctx.realtime(f"detect_triton_rt_{load}_busy_cores_{busy}", cameras, *detect,
                                      wrapper=undone_by("--busy-cores", busy)))
        # beside the fewer busy cores, two settings that might weather a slow spell better: one thread less between a
        # request and its answer (blocking requests), a late step costing latency instead of a frame (two frames)
        busy = BUSY_CORES[0]
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_blocking_requests_busy_cores_{busy}", cameras, *detect,
                                  wrapper=undone_by("--blocking-requests", "--busy-cores", busy)))
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_camera_buffer_2_busy_cores_{busy}", cameras, *detect,
                                  "-c", variants["_camera_buffer_2"], wrapper=undone_by("--busy-cores", busy)))
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_niceness_{DEPLOYMENT_NICENESS}_busy_cores_{busy}", cameras,
                                  *detect, wrapper=undone_by("--niceness", DEPLOYMENT_NICENESS, "--busy-cores", busy)))
        steps.append(ctx.realtime(f"detect_triton_rt_{load}_in_flight_3_busy_cores_{busy}", cameras, *detect, "-c",
                                  in_flight["_in_flight_3"], wrapper=undone_by("--busy-cores", busy)))
        steps.append(ctx.flat_out(f"detect_triton_fast_{load}", cameras, *detect))
        steps.append(ctx.flat_out(f"detect_triton_fast_{load}_opencv_threads_as_is", cameras, *detect,
                                  wrapper=undone_by("--opencv-threads-as-is")))
        for cores in SERVER_CORES:
            steps.append(ctx.flat_out(f"detect_triton_fast_{load}_server_cores_{cores}", cameras, *detect,
                                      wrapper=undone_by("--server-cores", cores)))
        # flat out with more and fewer requests in flight, where the cameras do not pace the run
        for suffix, config in {**in_flight, "_system_inputs": system_inputs, "_batch_window_2": window}.items():
            steps.append(ctx.flat_out(f"detect_triton_fast_{load}{suffix}", cameras, *detect, "-c", config))
        groups.append(ctx.triton(f"triton_{load}", steps, "--device", ctx.settings.device, *model))
        # a server of its own that hands requests over at once instead of holding one up to 0.5 ms for a preferred
        # batch size (detection.triton.max_queue_delay_ms 0: the python model forms its own batches), in real time
        # and flat out
        no_delay = ctx.config("triton_queue_delay_0", triton={"max_queue_delay_ms": 0})
        served = [ctx.realtime(f"detect_triton_rt_{load}_queue_delay_0", cameras, *detect),
                  ctx.flat_out(f"detect_triton_fast_{load}_queue_delay_0", cameras, *detect)]
        groups.append(ctx.triton(f"triton_{load}_queue_delay_0", served, "--device", ctx.settings.device, *model,
                                 "-c", no_delay))
        # a server of two model instances, each its own process of the python model: one whose core stalls holds up
        # its own requests only; with detect's 2 requests in flight and with 3, in real time, also beside busy cores
        served = []
        for suffix, options in {"": (), "_in_flight_3": ("-c", in_flight["_in_flight_3"])}.items():
            name = f"detect_triton_rt_{load}_instances_2{suffix}"
            served.append(ctx.realtime(name, cameras, *detect, *options))
            served.append(ctx.realtime(f"{name}_busy_cores_{busy}", cameras, *detect, *options,
                                       wrapper=undone_by("--busy-cores", busy)))
        groups.append(ctx.triton(f"triton_{load}_instances_2", served, "--device", ctx.settings.device, *model,
                                 "-c", ctx.config("triton_instances_2", triton={"instances": 2})))
    return groups


def loads(ctx: Context) -> list[Step | Served]:
    steps: list[Step | Served] = [
        ctx.bench(f"bench_pytorch_{load}", "--backends", "pytorch", *ctx.detection, "--model", ctx.checkpoint(load),
                  *ctx.iterations, "--cameras", ctx.settings.cameras)
        for load in ctx.loads
    ]
    for load in ctx.loads:  # PyTorch compiled and the server, one bench per load
        model = [*ctx.model, "--model", ctx.checkpoint(load)]
        bench = ctx.bench(f"bench_{load}", "--backends", "pytorch,triton", "-c", ctx.compile_config(),
                          "--device", ctx.settings.device, *model, *ctx.iterations, "--cameras", ctx.settings.cameras,
                          "--client-processes", 4, timeout_s=300)
        steps.append(ctx.triton(f"triton_{load}", [bench], "--device", ctx.settings.device, *model))
    return steps


def nms(ctx: Context) -> list[Step | Served]:
    return [
        Step("nms_bench", 120, ctx.script("nms_bench", "--iters", 200, "--json", ctx.result("nms_bench.json")),
             needs_gpus=1),
        Step("nms_bench_after_model", 120, ctx.script(
            "nms_bench", "--iters", 100, "--model-ms", 3, "--json", ctx.result("nms_bench_after_model.json")),
            needs_gpus=1),
        # the same, the host waiting for the candidate counts before it queues the NMS (what the Detector avoids)
        Step("nms_bench_after_model_counts_first", 120, ctx.script(
            "nms_bench", "--iters", 100, "--model-ms", 3, "--counts-first",
            "--json", ctx.result("nms_bench_after_model_counts_first.json")), needs_gpus=1),
        Step("nms_gpu_tests", 180, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    str(ROOT / "tests" / "core" / "test_nms_kernels.py")], needs_gpus=1),
    ]


# One process each: cuDNN's choices and torch.compile's settings hold for the whole process.
MODEL_STEP_VARIANTS = {
    "graph": ["--cudnn-benchmark", "off"],
    "graph_search": ["--cudnn-benchmark", "on"],
    "compile": ["--compile", "--cudnn-benchmark", "off"],
    "compile_search": ["--compile", "--cudnn-benchmark", "on"],
    "compile_search_freezing": ["--compile", "--freezing", "--cudnn-benchmark", "on"],
}


def model_step(ctx: Context) -> list[Step | Served]:
    model_type = option_value(ctx.model, "--model-type") or "mot17"
    return [
        Step(f"model_step_{name}", 330, ctx.script("model_step_bench", *options, "--model-type", model_type,
                                                   "--sizes", "1,2,4,5,8", "--iters", 100),
             stdout=ctx.result(f"model_step_{name}.json"), needs_gpus=1)
        for name, options in MODEL_STEP_VARIANTS.items()
    ]


def multicam(ctx: Context) -> list[Step | Served]:
    count = ctx.camera_count
    cameras = ctx.clips(count)
    detect = ["--backend", "pytorch", *ctx.detection]
    through_server = cameras[:4]
    return [
        ctx.detect(f"detect_pytorch_rt{count}", cameras, *detect, "--realtime", timeout_s=120),
        ctx.detect(f"detect_pytorch_fast{count}", cameras, *detect, timeout_s=120),
        ctx.bench(f"bench_pytorch_{count}_clip", "--backends", "pytorch", *ctx.detection, "--source", cameras[0],
                  *ctx.iterations, "--cameras", count),
        ctx.detect("detect_pytorch_one", cameras[:1], *detect, timeout_s=60),
        ctx.triton("triton", [
            ctx.detect(f"detect_triton_rt{len(through_server)}", through_server, "--backend", "triton", *ctx.model,
                       "--realtime", timeout_s=120),
        ], *ctx.detection),
        Step("decode", 120, ctx.script("decode_bench", "--clip", cameras[0], "--readers", "1,4,16", "--decoders",
                                       "opencv", "--workers", "thread", "--json", ctx.result("decode.json"))),
    ]


def capacity(ctx: Context) -> list[Step | Served]:
    count = ctx.camera_count
    cameras = ctx.clips(count)
    config = ctx.config("capacity", device=ctx.settings.device, compile=ctx.compiles,
                        triton={"repository": ctx.repository("triton")})
    common = ["-c", config, *ctx.model]
    need = ["--cameras", count, "--fps", 30, "--latency-ms", 100]
    open_loop = ctx.bench(f"bench_open{count}", *common, "-b", "pytorch,triton", "--source", cameras[0],
                          "--iters", 20, "--warmup", 5, *need, "--seconds", 3, "--parity")
    return [
        ctx.detect(f"detect_pytorch_compile_rt{count}", cameras, *common, "--backend", "pytorch", "--realtime"),
        ctx.triton("triton", [
            open_loop,
            ctx.recommend(f"verify{count}", *common, "--bench", open_loop.output, *need, "--verify", "--seconds", 5,
                          "--deploy", ctx.result("deploy"), timeout_s=150, needs_gpus=ctx.gpus_needed),
        ], *common),
    ]


def parity(ctx: Context) -> list[Step | Served]:
    # Parity compares precisions and runtimes, not speed: no compile.
    config = ctx.config("parity_crowd", model_path=ctx.checkpoint("crowd"), device=ctx.settings.device,
                        compile=False, onnx_path=ctx.work_dir / "crowd.onnx",
                        triton={"repository": ctx.repository("triton")})
    common = ["-c", config, *ctx.model]
    return [
        Step("export_onnx", 120, ctx.reidctl("export-onnx", *common, "--no-progress")),
        ctx.triton("triton", [
            ctx.bench("bench_parity_crowd", *common, "-b", "pytorch,onnxruntime,triton", "--parity",
                      "--iters", 10, "--warmup", 2, "--cameras", 1, timeout_s=150),
        ], *common),
    ]


def max_cameras(ctx: Context) -> list[Step | Served]:
    groups: list[Step | Served] = []
    for load in ctx.loads:
        name = f"triton_{load}"
        config = ctx.config(f"max_cameras_{load}", model_path=ctx.checkpoint(load), device=ctx.settings.device,
                            compile=ctx.compiles, triton={"repository": ctx.repository(name)})
        common = ["-c", config, *ctx.model]
        search = ctx.recommend(f"capacity_{load}", *common, "--cameras", ctx.camera_count, "--fps", 30,
                               "--latency-ms", 100, "--max-cameras", "-b", "pytorch,triton", "--camera-limit", 48,
                               "--seconds", 3, timeout_s=300, needs_gpus=ctx.gpus_needed)
        groups.append(ctx.triton(name, [search], *common))
    return groups


def multigpu(ctx: Context) -> list[Step | Served]:
    # One device against two of the same kind; on a CPU, cpu against cpu,cpu checks the commands.
    asked = ctx.settings.device
    one, two = ("cuda:0", "cuda:0,1") if ctx.gpus_needed else (asked, f"{asked},{asked}")
    tag = {one: one.replace(":", "_"), two: two.replace(":", "_").replace(",", "_")}
    needs = {one: ctx.gpus_needed, two: 2 * ctx.gpus_needed}
    bench = [*ctx.model, *ctx.iterations, "--cameras", ctx.settings.cameras]
    steps: list[Step | Served] = [
        ctx.bench(f"bench_{tag[device]}", "--backends", "pytorch", "--device", device, *bench,
                  needs_gpus=needs[device])
        for device in (one, two)
    ]
    steps.append(ctx.detect(f"detect_{tag[two]}_{ctx.camera_count}", ctx.clips(ctx.camera_count),
                            "--backend", "pytorch", "--device", two, *ctx.model, needs_gpus=needs[two]))
    for gpus, needed in (("0", 1), ("all", 2)):  # the server's instances on GPU 0 only, then one on every GPU
        served = ctx.bench(f"bench_triton_gpus_{gpus}", "--backends", "triton", *bench, "--client-processes", 4)
        steps.append(ctx.triton(f"triton_gpus_{gpus}", [served], *ctx.model, "--gpus", gpus, needs_gpus=needed))
    return steps


def backends(ctx: Context) -> list[Step | Served]:
    onnx = {precision: ctx.work_dir / f"model_{precision}.onnx" for precision in ("fp16", "fp32")}
    engine = ctx.work_dir / "model_fp16.trt"
    steps: list[Step | Served] = [
        Step(f"export_{precision}", 300, ctx.reidctl("export-onnx", *ctx.model, f"--{precision}", "--output", path,
                                                     "--no-progress", "--json"),
             stdout=ctx.result(f"export_{precision}.json"))
        for precision, path in onnx.items()
    ]
    steps.append(Step("build_engine", 1200, ctx.reidctl("build-engine", "--onnx", onnx["fp16"], "--output", engine,
                                                        "--fp16", "--workspace", 4096, "--no-progress"),
                      needs_gpus=1, needs_module="tensorrt"))
    measured = ["pytorch", *(["tensorrt"] if importable("tensorrt") else []), "triton"]
    engine_config = ctx.config("engine", tensorrt={"engine_path": engine})
    every_backend = ctx.bench("bench", "--backends", ",".join(measured), "-c", engine_config, *ctx.detection,
                              *ctx.iterations, "--cameras", ctx.settings.cameras, timeout_s=400)
    steps += [
        ctx.triton("triton", [every_backend], *ctx.detection),
        ctx.bench("bench_pytorch_compile", "--backends", "pytorch", "-c", ctx.compile_config(), *ctx.detection,
                  *ctx.iterations, "--cameras", ctx.settings.cameras, timeout_s=300),
        # The GPU machine's ONNX Runtime has the CPU provider only: measured there on purpose, with fewer frames.
        ctx.bench("bench_onnxruntime_cpu", "--backends", "onnxruntime", "-c",
                  ctx.config("onnxruntime", onnx_path=onnx["fp32"]), *ctx.model, "--device", "cpu",
                  "--iters", 50, "--warmup", 5, "--cameras", "1,4", timeout_s=300, needs_gpus=0),
    ]
    steps += [ctx.recommend(f"recommend_{count}", "--cameras", count, "--bench", every_backend.output)
              for count in (4, 16)]
    return steps


def triton(ctx: Context) -> list[Step | Served]:
    def bench(name: str, *options) -> Step:
        return ctx.bench(name, "--backends", "triton", *ctx.model, *options, *ctx.iterations,
                         "--cameras", ctx.settings.cameras)

    delay = ctx.config("queue_delay_2ms", triton={"max_queue_delay_ms": 2.0})
    two = ctx.config("instances_2", triton={"instances": 2})
    clip = ctx.clips(1, suffix=".avi")
    return [
        ctx.triton("triton", [
            bench("bench_triton"),
            bench("bench_triton_client_processes_4", "--client-processes", 4),  # the cameras over 4 processes
            ctx.detect("detect_triton_clip", clip, "--backend", "triton", *ctx.model),
        ], *ctx.detection),
        ctx.triton("triton_max_batch_16", [bench("bench_triton_max_batch_16")], *ctx.detection,
                   "--max-batch-size", 16),
        ctx.triton("triton_queue_delay_2ms", [bench("bench_triton_queue_delay_2ms", "-c", delay)], "-c", delay,
                   *ctx.detection),
        # the server model without torch.compile, then with two instances on the GPU (server_compiles, instances)
        ctx.triton("triton_no_compile", [bench("bench_triton_no_compile")], *ctx.detection, "--no-compile"),
        ctx.triton("triton_instances_2_no_compile", [bench("bench_triton_instances_2_no_compile")], "-c", two,
                   *ctx.detection, "--no-compile"),
    ]


def detect(ctx: Context) -> list[Step | Served]:
    sizes = dict.fromkeys(["640x640", ctx.settings.size])  # the network's input size, then the cameras'
    return [ctx.detect(f"detect_{size}", ctx.clips(1, size=size, suffix=".avi"), *ctx.detection, "--fp16")
            for size in sizes]


# What one full pass of the garbage collector over detect's imports holds the interpreter lock for, before and after
# they are frozen out of the passes (reidctl.apps.pipeline.setup_frozen_out_of_collection)
COLLECTOR_PASS = """
import gc, time, reidctl.apps.pipeline, torch, cv2
def timed():
    start = time.perf_counter(); gc.collect(); return round(1000 * (time.perf_counter() - start), 2)
print("full pass, ms:", [timed() for _ in range(3)])
gc.freeze()
print("after gc.freeze(), ms:", [timed() for _ in range(3)])
"""


def host(ctx: Context) -> list[Step | Served]:
    # the worst load's 8,400 rows a frame (YOLOX's 640x640 anchors) from the smallest model on the CPU: what each of
    # detect's outputs takes of the write stage when writing limits the run
    worst = ["--model-type", "nano", "--test-size", "640x640"]
    worst_outputs = ctx.flat_out("detect_worst_outputs", ctx.clips(2, size="240x320"), "--device", "cpu", *worst,
                                 "--model", ctx.checkpoint("worst", worst), timeout_s=300, needs_gpus=0)
    return [
        worst_outputs,
        Step("writer_bench", 300, ctx.script("writer_bench", "--json"), stdout=ctx.result("writer_bench.json")),
        Step("writer_bench_busy", 300, ctx.script("writer_bench", "--json", "--busy-threads", 1, "--frames", 320,
                                                  "--repeats", 3), stdout=ctx.result("writer_bench_busy.json")),
        Step("writer_step_rows", 300, ctx.script("writer_bench", "--step-rows", "32,128,256,1024", "--busy-threads", 1),
             stdout=ctx.result("writer_step_rows.json")),
        Step("hub_bench", 300, ctx.script("hub_bench", "--step-ms", 5), stdout=ctx.result("hub_bench.json")),
        Step("track_bench", 300, ctx.script("track_bench")),
        Step("decode_bench", 300, ctx.script("decode_bench", "--size", ctx.settings.size, "--frames",
                                             ctx.settings.frames, "--scene", ctx.settings.scene, "--readers", "1,2,4",
                                             "--json", ctx.result("decode_bench.json"))),
        Step("cli_startup", 300, ctx.script("cli_startup")),
        Step("collector_pass", 120, [sys.executable, "-c", COLLECTOR_PASS]),
        Step("frame_mappings", 300, ctx.script("frame_mappings", "--size", ctx.settings.size, "--json",
                                               ctx.result("frame_mappings.json"))),
        Step("formatter_threads", 120, ctx.script("formatter_threads", "--json", ctx.result("formatter_threads.json"))),
    ]


def cpu_threads(ctx: Context) -> list[Step | Served]:
    """The model on the CPU beside the cameras' readers: each run as shipped (the model gets the cores the readers
    leave) and with that choice undone (torch's own thread count); bench at one camera also with one thread."""
    cameras = ctx.clips(ctx.camera_count)
    crowd = ["--device", ctx.settings.device, *ctx.model, "--model", ctx.checkpoint("crowd")]
    # an untrained model at 416x416 (configs/cpu.yaml's size): the idle load, a larger model step
    idle = ["--device", ctx.settings.device, "--model-type", option_value(ctx.model, "--model-type") or "nano",
            "--test-size", "416x416"]
    one_camera = ["--backends", "pytorch", "--source", cameras[0], "--cameras", 1, "--iters", 60, "--warmup", 5, *idle]
    runs: dict[str, Callable[[str, tuple[str, ...]], Step]] = {
        "detect_crowd": lambda name, wrapper: ctx.flat_out(name, cameras, *crowd, wrapper=wrapper),
        "detect_idle_416": lambda name, wrapper: ctx.flat_out(name, cameras, *idle, wrapper=wrapper),
        "bench_crowd": lambda name, wrapper: ctx.bench(name, "--backends", "pytorch", "--source", cameras[0],
                                                       "--cameras", ctx.settings.cameras, *ctx.iterations, *crowd,
                                                       wrapper=wrapper),
        "bench_idle_416_one_camera": lambda name, wrapper: ctx.bench(name, *one_camera, wrapper=wrapper)}
    # each run as shipped, then undone
    variants = (("", undone_by()), ("_model_threads_as_is", undone_by("--model-threads-as-is")))
    steps: list[Step | Served] = [make(name + suffix, wrapper) for name, make in runs.items()
                                  for suffix, wrapper in variants]
    one_thread = ctx.bench("bench_idle_416_one_camera_omp_1", *one_camera)
    steps.append(dataclasses.replace(one_thread, argv=["env", "OMP_NUM_THREADS=1", *one_thread.argv]))
    return steps


@dataclass
class Suite:
    about: str  # what it measures; docs/PERFORMANCE.md names the suite beside each figure it reproduces
    build: Callable[[Context], list[Step | Served]]
    defaults: dict = field(default_factory=dict)  # settings other than Settings' own defaults


SUITES = {
    "pipeline-pytorch": Suite(
        "detect of N 1080p clips as N cameras per load through PyTorch (compile): real time and flat out with the "
        "MOT and JSON-lines outputs, --track at crowd, worst without outputs; bench --source on the same frames; "
        "each real-time load's first seconds traced (scripts/start_timeline.py)",
        pipeline_pytorch),
    "pipeline-triton": Suite(
        "the same cameras through the bundled server per load: bench on their frames (4 client processes), real time "
        "(in process too, beside the idle server; max_in_flight 2, 3, 4, 1; the readers at niceness 10; two frames a "
        "camera; frames through the host's shared memory instead of the GPU's; a 2 ms window for fuller requests; "
        "blocking requests; OpenCV's own threads; the server on 4 or 2 cores of its own) and flat out (max_in_flight "
        "2, 3, 4, 1; the host's shared memory; the 2 ms window; OpenCV's own threads; the server on its own cores); "
        "then a server with no queue delay, in real time and flat out; then a server of two model instances in real "
        "time (2 and 3 in flight, also beside busy cores)",
        pipeline_triton, {"loads": "idle,crowd"}),
    "loads": Suite(
        "bench at each load: PyTorch with CUDA graphs, then PyTorch compiled and the server in one run per load",
        loads, {"cameras": "1,16", "iters": 1000, "warmup": 100}),
    "nms": Suite("the GPU NMS against torchvision at the three loads, alone and behind a 3 ms model (also with the "
                 "host waiting for the candidate counts first); its GPU tests", nms),
    "model-step": Suite("the PyTorch runner's model step per batch size: CUDA graph or compile, cuDNN search on/off",
                        model_step),
    "multicam": Suite(
        "N 1080p cameras in one detect (real time, flat out), bench on their frames, one camera, 4 cameras through "
        "the server, decoding", multicam, {"frames": 300}),
    "capacity": Suite(
        "N cameras at 30 FPS: detect in real time (compile), open-loop bench of PyTorch and the server with parity, "
        "recommend --verify", capacity, {"frames": 300}),
    "parity": Suite("bench --parity at the crowd load: PyTorch fp32/fp16, ONNX Runtime, the server", parity),
    "max-cameras": Suite("recommend --max-cameras for PyTorch (compile) and the server at each load", max_cameras,
                         {"loads": "idle,worst"}),
    "multigpu": Suite(
        "one GPU against two: bench in process and through the server (instances on GPU 0, then on all), detect "
        "of N 1080p cameras on both", multigpu, {"cameras": "16,32", "frames": 150, "iters": 2000, "warmup": 60}),
    "backends": Suite(
        "every backend: ONNX exports, TensorRT engine (where installed), bench of PyTorch, TensorRT, the server and "
        "PyTorch compiled, ONNX Runtime on the CPU, recommend for 4 and 16 cameras", backends,
        {"cameras": "1,4,16", "iters": 1000, "warmup": 100}),
    "triton": Suite(
        "the bundled server: bench at max_batch_size 8 (from one client process and from 4) and 16, a 2 ms "
        "queue delay, without torch.compile, two instances; detect of a 1080p clip",
        triton, {"cameras": "1,4,16", "iters": 1000, "warmup": 100, "frames": 300}),
    "detect": Suite("detect of one 640x640 and one --size clip, end to end", detect, {"frames": 300}),
    "cpu-threads": Suite(
        "a model on the CPU beside 2 cameras' readers: detect and bench as shipped and with the model's threads "
        "left as torch sets them; bench at one camera with one thread", cpu_threads,
        {"device": "cpu", "cameras": "2", "frames": 200, "size": "120x160", "loads": "crowd", "iters": 200,
         "warmup": 10, "model_args": "--model-type nano --test-size 128x160"}),
    "host": Suite("the CPU's parts: detect's outputs at the worst load (a small model on the CPU), output writers, "
                  "tracker update, decoding, CLI start-up, a client process's memory, the formatting process's "
                  "threads, a collector pass over detect's imports, frame-sized mappings (strace)",
                  host, {"frames": 120}),
}


def number(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def figures(path: Path | None) -> list[str]:
    """Headline numbers of a detect summary, a bench report or a recommendation; none for other results."""
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    if "held" in data:  # scripts/gil_profile.py
        groups = ", ".join(f"{row['group']} {100 * row['share']:.1f} %" for row in data["groups"][:4])
        return [f"interpreter lock held {100 * data['held']:.1f} % of {data['seconds']} s: {groups}"]
    if "limiting_stage" in data:  # detect --summary-json
        load, latency = data.get("detection_load") or {}, data.get("latency_ms") or {}
        dropped = f"{data.get('dropped')} dropped"
        if data.get("dropped") and "by_second" in data:  # where a run's drops bunch (a summary before it has none)
            dropped += f" ({data['by_second'].get('0', {}).get('dropped', 0)} in second 0)"
        by_output = sorted((data.get("write_ms_by_output") or {}).items(), key=lambda pair: -pair[1])
        written = ("; write, ms a frame: " + ", ".join(f"{label} {ms:.2f}" for label, ms in by_output)
                   if by_output else "")
        busy = data.get("cpu_cores_busy") or {}
        cores = (f"; cores busy: detect {number(busy.get('detect'))}"
                 + (f", server {number(busy['server'])}" if busy.get("server") is not None else "")
                 + (f" (server on {data['cpus']['server']})" if (data.get("cpus") or {}).get("server") else "")
                 if busy else "")
        host = data.get("host_cpu")
        if host:  # the whole host's, and its worst second of each
            seconds = list((host.get("by_second") or {}).values())
            stolen = max((second["cores_stolen"] for second in seconds), default=None)
            pressure = max((second["cpu_pressure"] or 0 for second in seconds), default=None)
            cores += (f"; host: busy {number(host['cores_busy'])} of {host['cores']}, stolen "
                      f"{number(host['cores_stolen'], '.2f')} (worst second {number(stolen, '.2f')})")
            if host["cpu_pressure"] is not None:
                cores += (f", CPU pressure {number(100 * host['cpu_pressure'])} % "
                          f"(worst second {number(100 * pressure)} %)")
            if host.get("dropped_short_of_cores"):  # frames dropped in seconds the host was short of cores
                cores += f", {host['dropped_short_of_cores']} dropped short of cores"
        served = data.get("server_ms_per_frame") or {}
        server = ("; server, ms a frame: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in served.items())
                  if served else "")
        waits = data.get("wait_ms") or {}
        waited = (f", waits P99 {number((waits.get('behind_its_camera') or {}).get('p99'))} behind the camera / "
                  f"{number((waits.get('for_a_loop') or {}).get('p99'))} for a loop ms" if waits else "")
        if slowest := data.get("slowest_steps"):  # a stall's step, and through a server its model's part of it
            longest = slowest[0]
            in_server = "" if longest.get("server_ms") is None else f" ({number(longest['server_ms'])} in the server)"
            waited += f", longest step {number(longest['ms'])} ms{in_server}"
        return [f"{number(data.get('fps'))} FPS, {dropped}, P99 {number(latency.get('p99'))} ms{waited}, "
                f"batch {number(data.get('mean_batch'), '.2f')}, "
                f"kept {number(load.get('kept_per_frame'), '.0f')}/frame, busiest {data['limiting_stage']}{written}"
                f"{cores}{server}"]
    if "backends" in data:  # bench --output
        lines = []
        for backend in data["backends"]:
            if backend.get("status") != "ok":
                lines.append(f"{backend.get('name')}: {backend.get('status')} {backend.get('reason') or ''}".strip())
                continue
            runs = [f"P50 {number((backend.get('single_stream') or {}).get('p50_ms'), '.2f')} ms"]
            for run in backend.get("multi_stream") or []:
                dropped = "" if run.get("dropped") is None else f", {run['dropped']} dropped"
                cameras = f"{run['cameras']} camera" + ("s" if run["cameras"] != 1 else "")
                runs.append(f"{cameras} {number(run['throughput_fps'])} FPS ({run['mode']}{dropped})")
            lines.append(f"{backend['name']}: " + "; ".join(runs))
        lines += [f"parity {row['backend']} {row['precision']}: {row['status']}, {row['matched']} of "
                  f"{row['reference_boxes']} matched"
                  for row in data.get("parity") or [] if row["status"] != "reference"]
        return lines
    if "choice" in data:  # recommend --json
        return [(data.get("capacity") or {}).get("line") or f"chose {data['choice']} ({data.get('mode')})"]
    return []


# What each GPU does while a step runs, every 100 ms: its clocks and power show whether a run's first seconds wait
# for the GPU to speed up, and its utilisation whether the GPU or the host is the limit.
GPU_TRACE_FIELDS = "timestamp,index,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu"


@contextlib.contextmanager
def gpu_trace(path: Path, gpus: int):
    """nvidia-smi's samples of every GPU into ``path`` (CSV) for the duration of a step that uses ``gpus`` GPUs;
    nothing where it uses none or nvidia-smi is missing."""
    tool = shutil.which("nvidia-smi") if gpus else None
    if tool is None:
        yield
        return
    with open(path, "w") as trace:
        sampler = subprocess.Popen([tool, f"--query-gpu={GPU_TRACE_FIELDS}", "--format=csv", "-lms", "100"],
                                   stdout=trace, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # ended as a step is, after it
        try:
            yield
        finally:
            end_process_group(sampler)


def visible_gpus() -> list[str]:
    try:
        probe = subprocess.run([sys.executable, "-c", GPU_PROBE], capture_output=True, text=True, timeout=120,
                               env=CHILD_ENV, cwd=ROOT)
        return json.loads(probe.stdout.splitlines()[-1]) if probe.returncode == 0 else []
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return []


def end_process_group(child: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (its own session), SIGKILL if it is still there after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def signals_ignored():
    """A second Ctrl-C must not leave the server running: its stop finishes first (it has its own bound)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Runner:
    def __init__(self, suite: str, settings: Settings, out_dir: Path, work_dir: Path, dry_run: bool):
        self.out_dir = out_dir
        self.dry_run = dry_run
        self.results: list[dict] = []
        self.summary = {"suite": suite, "about": SUITES[suite].about, "command": shlex.join(sys.argv),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None, "interrupted": False,
                        "settings": dataclasses.asdict(settings), "work_dir": str(work_dir),
                        "machine": {"host": platform.node(), "python": platform.python_version(),
                                    "cpus": os.cpu_count(), "gpus": None if dry_run else visible_gpus()},
                        "steps": self.results}

    def missing(self, step: Step) -> str | None:
        if step.needs_module and not importable(step.needs_module):
            return f"needs {step.needs_module}, not installed here"
        if step.needs_program and not find_program(step.needs_program):
            return f"needs the program {step.needs_program}, not installed here"
        if step.needs_gpus and step.needs_gpus > len(self.gpu_names()):
            return f"needs {step.needs_gpus} GPU(s), {len(self.gpu_names())} here"
        return None

    def gpu_names(self) -> list[str]:
        """The GPUs here, probed once by a child that imports torch: when a run starts; in a dry run, only once a
        step needs one."""
        if self.summary["machine"]["gpus"] is None:
            self.summary["machine"]["gpus"] = visible_gpus()
        return self.summary["machine"]["gpus"]

    def record(self, step: Step, status: str, exit_code: int | None = None, seconds: float = 0.0,
               reason: str | None = None) -> dict:
        result = {"name": step.name, "status": status, "exit_code": exit_code, "seconds": round(seconds, 1),
                  "reason": reason, "command": shlex.join(step.argv),
                  "log": f"{step.name}.log" if status not in ("skipped", "planned") else None,
                  "output": str(step.output) if step.output else None,
                  "figures": figures(step.output) if status not in ("skipped", "planned") else []}
        self.results.append(result)
        if not self.dry_run:
            detail = f" ({reason})" if reason else f" (exit {exit_code})" if exit_code else ""
            print(f"{step.name}: {status}{detail}" + ("" if status == "skipped" else f" after {seconds:.0f} s"),
                  flush=True)
        self.write_summary()
        return result

    def step(self, step: Step) -> dict:
        reason = self.missing(step)
        if self.dry_run:
            print(f"$ {shlex.join(step.argv)}  # {reason or f'{step.timeout_s} s'}")
        if reason:
            return self.record(step, "skipped", reason=reason)
        if self.dry_run:
            return self.record(step, "planned")
        for stale in (step.output, step.stdout):  # a run before left it: this run's failure must not show its figures
            if stale:
                stale.unlink(missing_ok=True)
        log_path = self.out_dir / f"{step.name}.log"
        started = time.monotonic()
        with contextlib.ExitStack() as scope:
            log = scope.enter_context(open(log_path, "w"))
            out = scope.enter_context(open(step.stdout, "w")) if step.stdout else log
            scope.enter_context(gpu_trace(self.out_dir / f"{step.name}.gpu.csv", step.needs_gpus))
            log.write(f"$ {shlex.join(step.argv)}\n")
            log.flush()
            # A session of its own: a timeout or Ctrl-C ends the whole step (its workers too), and the terminal's
            # Ctrl-C reaches this runner only, which then ends the step and stops the server in order.
            child = subprocess.Popen(step.argv, cwd=ROOT, env=CHILD_ENV, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=log, start_new_session=True)
            try:
                exit_code = child.wait(step.timeout_s)
            except subprocess.TimeoutExpired:
                end_process_group(child)
                return self.record(step, "timed out", seconds=time.monotonic() - started,
                                   reason=f"ended after its {step.timeout_s} s bound")
            except KeyboardInterrupt:
                end_process_group(child)
                self.record(step, "interrupted", seconds=time.monotonic() - started)
                raise
        return self.record(step, "ok" if exit_code == 0 else "failed", exit_code, time.monotonic() - started)

    def served(self, served: Served) -> None:
        setup = Context.reidctl("setup-triton", "--repository", served.repository)
        start = Step(f"{served.name}_start", served.timeout_s, [*setup, *served.setup_args, "--start"],
                     needs_gpus=served.needs_gpus)
        started = None
        try:
            started = self.step(start)
            for step in served.steps:
                if started["status"] in ("ok", "planned"):
                    self.step(step)
                else:
                    self.record(step, "skipped", reason=started["reason"] or f"{start.name} {started['status']}")
        finally:
            if started is None or started["status"] != "skipped":  # the start ran, maybe halfway: always stop
                with signals_ignored():
                    self.step(Step(f"{served.name}_stop", STOP_TIMEOUT_S, [*setup, "--stop"]))

    def run(self, item: Step | Served) -> None:
        if isinstance(item, Served):
            self.served(item)
        else:
            self.step(item)

    def write_summary(self) -> None:
        path = self.out_dir / "summary.json"
        path.with_suffix(".json.tmp").write_text(json.dumps(self.summary, indent=2) + "\n")
        path.with_suffix(".json.tmp").replace(path)  # a reader never sees half a file

    def finish(self, interrupted: bool) -> int:
        self.summary.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), interrupted=interrupted)
        self.write_summary()
        width = max([len(result["name"]) for result in self.results] + [4])
        print(f"\n{'step':<{width}}  {'status':<11}  {'s':>5}  figures")
        for result in self.results:
            lines = result["figures"] or [result["reason"] or ""]
            print(f"{result['name']:<{width}}  {result['status']:<11}  {result['seconds']:>5.0f}  {lines[0]}")
            for line in lines[1:]:
                print(f"{'':<{width + 22}}  {line}")
        print(f"\n{self.out_dir / 'summary.json'}")
        if interrupted:
            return 130
        return 1 if any(result["status"] in ("failed", "timed out") for result in self.results) else 0


def chosen(plan: list[Step | Served], patterns: list[str]) -> list[Step | Served]:
    """The plan's steps whose names match a pattern; a server group is kept for the steps of it that match."""
    def matches(step: Step) -> bool:
        return any(fnmatch.fnmatchcase(step.name, pattern) for pattern in patterns)

    kept: list[Step | Served] = []
    for item in plan:
        if isinstance(item, Served):
            steps = [step for step in item.steps if matches(step)]
            if steps:
                kept.append(dataclasses.replace(item, steps=steps))
        elif matches(item):
            kept.append(item)
    return kept


def in_rounds(plans: list[list[Step | Served]]) -> list[Step | Served]:
    """One plan built once per round (each round's results in its own folder), its steps in turn: round 1's steps of
    a stretch (a server group, or the steps between two), then round 2's, ... so that settings compared step by step
    run as neighbours (A B A B); a server group is started once for all rounds. Each step's name ends in _rROUND."""
    def stretches(plan: list[Step | Served]) -> list[list[Step] | Served]:
        parts: list[list[Step] | Served] = []
        for item in plan:
            if isinstance(item, Served):
                parts.append(item)
            elif parts and isinstance(parts[-1], list):
                parts[-1].append(item)
            else:
                parts.append([item])
        return parts

    interleaved: list[Step | Served] = []
    for parts in zip(*map(stretches, plans)):
        steps = [dataclasses.replace(step, name=f"{step.name}_r{number}")
                 for number, part in enumerate(parts, 1) for step in (part.steps if isinstance(part, Served) else part)]
        if isinstance(parts[0], Served):
            interleaved.append(dataclasses.replace(parts[0], steps=steps))
        else:
            interleaved.extend(steps)
    return interleaved


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: the server is stopped and the summary written


def parse_args() -> argparse.Namespace:
    suites = "\n".join(f"  {name:<17} {suite.about}" for name, suite in SUITES.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"suites:\n{suites}\n\nA check on a CPU: scripts/perf.py pipeline-pytorch /tmp/p --device cpu "
               "--cameras 2 --frames 20 --size 120x160 --iters 10 --warmup 2 "
               "--model-args \"--model-type nano --test-size 128x160\"")
    parser.add_argument("suite", choices=SUITES, metavar="SUITE", help="one of the suites below")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="logs, results and summary.json")
    parser.add_argument("--cameras", help="camera counts of bench's runs, comma-separated (the clips: the largest)")
    parser.add_argument("--frames", type=int, help="frames per generated clip")
    parser.add_argument("--size", help="generated clips' HEIGHTxWIDTH (default 1080x1920)")
    parser.add_argument("--scene", choices=("noise", "camera"), help="generated clips' scene (default noise: a fresh "
                        "noisy background every frame; camera: a still background, far cheaper to decode)")
    parser.add_argument("--device", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--model-args", help="model options for every command (default \"--model-type mot17\"); "
                                             "one option alone as --model-args=--fp32")
    parser.add_argument("--loads", help="detection loads, comma-separated, of idle, crowd, worst")
    parser.add_argument("--iters", type=int, help="bench's measured requests per run")
    parser.add_argument("--warmup", type=int, help="bench's untimed requests before each run")
    parser.add_argument("--checkpoints", type=Path, help="existing load checkpoints (*_idle.pth.tar, ...) to use "
                                                         "instead of writing them")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "reidctl-perf",
                        help="fixtures, reused by later runs (default: %(default)s)")
    parser.add_argument("--steps", help="only the steps whose names match one of these comma-separated patterns "
                                        "(e.g. 'detect_*_rt_crowd*'); the fixtures they need are still made")
    parser.add_argument("--rounds", type=int, default=1, help="run the chosen steps this many times, in turn (A B A B "
                        "...), each round's results in OUT_DIR/rN/ (default 1: once, in OUT_DIR)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps' commands, run nothing")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.loads and not set(args.loads.split(",")) <= set(LOADS):
        parser.error(f"--loads: a comma list of {', '.join(LOADS)}")
    return args


def main() -> int:
    args = parse_args()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name) is not None}
    settings = dataclasses.replace(Settings(), **{**SUITES[args.suite].defaults, **given})
    out_dir, work_dir = args.out_dir.resolve(), args.work_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    def plan_in(results_dir: Path) -> tuple[Context, list[Step | Served]]:
        context = Context(settings, results_dir, work_dir, args.checkpoints and args.checkpoints.resolve())
        plan = SUITES[args.suite].build(context)
        return context, chosen(plan, args.steps.split(",")) if args.steps else plan

    if args.rounds > 1:
        rounds = [plan_in(out_dir / f"r{number}") for number in range(1, args.rounds + 1)]
        for round_context, _ in rounds:
            round_context.out_dir.mkdir(exist_ok=True)
        context, plan = rounds[0][0], in_rounds([round_plan for _, round_plan in rounds])
    else:
        context, plan = plan_in(out_dir)
    runner = Runner(args.suite, settings, out_dir, work_dir, args.dry_run)
    if not args.dry_run:
        shutil.rmtree(work_dir / "outputs", ignore_errors=True)  # detect's outputs of a run before
    signal.signal(signal.SIGTERM, interrupt)
    interrupted = False
    try:
        for item in [*context.fixtures.values(), *plan]:
            runner.run(item)
    except KeyboardInterrupt:
        interrupted = True
    return runner.finish(interrupted)


if __name__ == "__main__":
    sys.exit(main())
