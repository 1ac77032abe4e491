"""`reidctl detect`'s engine: many cameras through one Detector into every output, with live statistics.

One reader thread per camera decodes on the CPU and letterboxes right after (reidctl/apps/cameras.py). Every
backend gets one ``detect_canvases`` call per step holding the newest frame of every camera that has one, as
DeepStream's stream muxer does. Several steps run at once: in process one batch loop per device (a DetectorPool);
through servers one per request their client keeps in flight (detection.triton.max_in_flight to each), each step
one request that the server joins into its own batches. A camera gives its next frame only once its last one is
finished.

Outputs are written off the detection path: a step's frames are handed to the output stage's writer thread
(reidctl/io/output_stage.py), which has them tracked (with tracking), formatted and their text appended in its own
process, and writes the rest while the next step runs.
Nothing handed over is lost, and every output holds the same frames: any stop (every camera ended, an error, a full
disk, Ctrl-C, SIGTERM) takes no frame more, writes every frame handed over, then publishes every output, and the
result says why the run stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import heapq
import json
import math
import signal
import sys
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from reidctl.config import DEFAULT_TIMEOUT_S, TrackingConfig
from reidctl.apps.cameras import SAMPLES_KEPT, STAGE_SAMPLES_KEPT, Camera, Hub, TimedFrame, append_kept
from reidctl.core.detector import DetectionLoad, Detector, DetectorPool, StageTimes, create_detector
from reidctl.core.preprocess import letterbox_frame
from reidctl.apps.stats import LatencySummary, mean_size
from reidctl.errors import ReidctlError, Terminated, describe_error
from reidctl.io.atomic import check_writable_dir, ensure_writable_dir, write_text_atomic
from reidctl.io.cores import (
    HostCpuWatch,
    available_cpus,
    cores_per_reader,
    cpu_list_text,
    cpu_seconds_between,
    cpu_seconds_by_process,
    counted_short_of_cores,
    own_cpu_seconds,
    process_tree,
    thread_on,
    usable_cores,
)
from reidctl.io.sources import (
    CameraSpec,
    FrameSource,
    UnopenedSource,
    lower_thread_priority,
    open_source,
)
from reidctl.io.synthetic import synthetic_frame, video_fourcc
from reidctl.io.output_stage import OutputStage
from reidctl.io.paths import refuse_shared_paths
from reidctl.io.writers import ImageDirWriter, JSONLWriter, MOTWriter, VideoWriter
from reidctl.tracking import ByteTracker, TrackCounts
from reidctl.tracking.outputs import CropsOutput, CropsWriter, MOTTrackTextWriter, SequenceInfo
from reidctl.tracking.run import DEFAULT_FPS, mot_paths
from reidctl.triton.client import local_servers

DEFAULT_OUTPUT_DIR = Path("runs/detect")
CAMERA_VIDEO_SUFFIX = ".mp4"  # one annotated video per camera in --save-video DIR (mp4v: writes faster than MJPG)
MAX_DEFAULT_BATCH = 16
UPDATE_INTERVAL_S = 0.5
# One detect step in this many runs with the device synchronised between its stages, to time them: the others keep
# the upload, the model and NMS overlapped.
STAGE_SAMPLE_EVERY = 16
DETECT_STAGES = {"upload": "preprocess", "model": "inference", "nms_rescale": "postprocess"}  # StageTimes' fields
WORKER_JOIN_S = 10.0  # how long a stop waits for a detection step in flight before leaving it behind

Warn = Callable[[str], None]


@dataclass
class OutputRequest:
    """What the user asked to write. With one camera mot/video are files; with several, directories."""

    mot: Path | None = None
    jsonl: Path | None = None
    video: Path | None = None
    images: Path | None = None
    summary_json: Path | None = None
    no_output: bool = False  # no detection output at all (a summary may still be written)
    track: bool = False  # track each camera: mot holds MOT17 tracking files, jsonl and videos the tracks
    crops: Path | None = None  # crops of the tracks for ReID (needs track)


@dataclass
class DetectOptions:
    realtime: bool = False  # play files at their frame rate, as cameras would (late frames are dropped)
    max_frames: int | None = None  # per camera
    timeout_s: float = DEFAULT_TIMEOUT_S  # opening and reading a network source
    strict: bool = False  # an unreadable image or a truncated video stops the run instead of a warning
    max_batch: int | None = None  # frames per detect_batch call; default: the cameras shared by the devices, at most 16


@dataclass
class CameraOutputs:
    mot: Path | None = None
    video: Path | None = None
    images: Path | None = None
    seqinfo: Path | None = None  # tracking: the MOT file's seqinfo.ini


@dataclass
class OutputPlan:
    cameras: dict[str, CameraOutputs]
    jsonl: Path | None = None
    summary_json: Path | None = None
    track: bool = False
    crops: Path | None = None

    def files(self) -> list[tuple[str, Path]]:
        named = [(f"--{option}", path) for outputs in self.cameras.values()
                 for option, path in (("mot", outputs.mot), ("save-video", outputs.video)) if path]
        return named + [(option, path) for option, path in (("--jsonl", self.jsonl),
                                                             ("--summary-json", self.summary_json)) if path]

    def directories(self) -> list[Path]:
        return [outputs.images for outputs in self.cameras.values() if outputs.images]


@dataclass
class DetectResult:
    summary: dict
    written: list[Path] = field(default_factory=list)
    stopped: str | None = None  # None: every camera ended; "interrupted", "terminated", or the error's message
    latencies: dict[str, list[float]] = field(default_factory=dict)  # seconds per camera: each frame decoded -> done

    @property
    def failed(self) -> bool:
        return self.stopped not in (None, "interrupted", "terminated")


# -- outputs -----------------------------------------------------------------------------------------------------


def plan_outputs(names: list[str], request: OutputRequest) -> OutputPlan:
    """Every output path, checked before anything is opened: a one-line error for a path that cannot work."""
    single = len(names) == 1
    mot = request.mot
    given = [option for option, path in (("--mot", request.mot), ("--jsonl", request.jsonl),
                                         ("--save-video", request.video), ("--save-images", request.images),
                                         ("--crops", request.crops)) if path]
    if request.crops is not None and not request.track:
        raise ReidctlError("--crops needs --track: crops are cut from the tracks")
    if request.no_output and given:
        raise ReidctlError(f"--no-output writes no detection output: drop {', '.join(given)} or --no-output")
    if not given and not request.no_output:
        mot = DEFAULT_OUTPUT_DIR / f"{names[0]}.txt" if single else DEFAULT_OUTPUT_DIR
    for option, path in (("--mot", mot), ("--save-video", request.video)):
        if path is None:
            continue
        if single and path.is_dir():
            raise ReidctlError(f"{option} {path} is a directory: with one source it names a file")
        if not single and path.exists() and not path.is_dir():
            raise ReidctlError(f"{option} {path} is a file: with {len(names)} cameras it names a directory "
                               "(one file per camera)")
        if not single:
            _refuse_file_name(option, path, f"with {len(names)} cameras it names a directory (one file per camera)")
    if request.images is not None:
        _refuse_file_name("--save-images", request.images, "it names a directory (one image per frame)")
    if request.crops is not None and request.crops.exists() and not request.crops.is_dir():
        raise ReidctlError(f"--crops {request.crops} is a file: give a directory")
    if single and request.video:
        video_fourcc(request.video)  # refused before any work, not when the writer opens
    for option, path in (("--jsonl", request.jsonl), ("--summary-json", request.summary_json)):
        if path is not None and path.is_dir():
            raise ReidctlError(f"{option} {path} is a directory: give a file path")
    def place(path: Path | None, name: str) -> Path | None:  # one camera: the path itself; several: inside it
        return path if path is None or single else path / name

    seqinfo = {name: paths[1] for name, paths in mot_paths(names, mot).items()} if request.track else {}
    cameras = {
        name: CameraOutputs(place(mot, f"{name}.txt"), place(request.video, f"{name}{CAMERA_VIDEO_SUFFIX}"),
                            place(request.images, name), seqinfo.get(name))
        for name in names
    }
    plan = OutputPlan(cameras, request.jsonl, request.summary_json, request.track, request.crops)
    _refuse_shared_paths(plan)
    for _, path in plan.files():
        check_writable_dir(path.parent)
    for directory in [*plan.directories(), *([plan.crops] if plan.crops else [])]:
        check_writable_dir(directory)
    return plan


def _refuse_file_name(option: str, path: Path, needs: str) -> None:
    """A directory output named like a file (``x.txt``) is a mistake more often than a directory: refused, unless
    that directory exists."""
    if path.suffix and not path.is_dir():
        raise ReidctlError(f"{option} {path}: {needs}; give a directory name without a suffix like '{path.suffix}'")


def _refuse_shared_paths(plan: OutputPlan) -> None:
    """io.paths' rule again on every camera's paths: the CLI saw only the paths given, and a folder given for several
    cameras (or the default output) names one per camera. Nothing else may go inside a --save-images folder."""
    refuse_shared_paths([*plan.files(), *(("--save-images", directory) for directory in plan.directories())])
    files = [(option, path.resolve()) for option, path in plan.files()]
    for directory in plan.directories():
        folder = directory.resolve()
        for option, path in files:
            if path.is_relative_to(folder):
                raise ReidctlError(f"{option} writes {path.relative_to(folder)} inside {directory}, where "
                                   "--save-images writes images: give it a path outside that directory")


class Outputs:
    """Every camera's writers, written on the output stage's thread (``submit`` hands a step's frames over); with
    ``tracking``, one tracker per camera, updated in the output stage's formatting process.

    ``on_failure`` hears, from that thread, why an output failed (a full disk): the run stops there."""

    def __init__(self, plan: OutputPlan, cameras: list[Camera], on_failure: Callable[[str], None] | None = None,
                 tracking: TrackingConfig | None = None):
        self.writers: dict[str, list] = {}
        self.shared: list = []
        self.stage: OutputStage | None = None
        self.tracking = False
        try:
            # The image writers create their own folders: knowing they did, a discarded run takes them away again.
            for directory in {path.parent for _, path in plan.files()}:
                ensure_writable_dir(directory)
            self.shared += [JSONLWriter(plan.jsonl)] if plan.jsonl else []
            if plan.crops:
                self.shared.append(CropsOutput(CropsWriter(plan.crops, tracking.crops_every, tracking.crop_size)))
            for camera in cameras:
                paths = plan.cameras[camera.name]
                writers = self.writers[camera.name] = []
                if paths.mot and plan.track:
                    info = SequenceInfo(camera.name, camera.fps or DEFAULT_FPS)
                    writers.append(MOTTrackTextWriter(paths.mot, paths.seqinfo, info))
                elif paths.mot:
                    writers.append(MOTWriter(paths.mot))
                writers += [VideoWriter(paths.video, camera.fps)] if paths.video else []
                writers += [ImageDirWriter(paths.images)] if paths.images else []
            trackers = {camera.name: ByteTracker(tracking, camera.fps or DEFAULT_FPS) for camera in cameras
                        } if plan.track else None
            self.stage = OutputStage(self.writers, self.shared, on_failure=on_failure, trackers=trackers)
            self.tracking = plan.track
        except BaseException:
            # The last opened first: a folder that several outputs share is empty when the first of them goes.
            for writer in reversed([*self.shared, *(w for own in self.writers.values() for w in own)]):
                writer.close(publish=False)
            raise

    def submit(self, frames: list[tuple[TimedFrame, object]]) -> bool:
        """Hand a step's (frame, detections) over; False once the outputs take no frame more."""
        return self.stage.submit([(item.camera.name, item.frame, detections) for item, detections in frames])

    def close(self) -> tuple[list[Path], list[str]]:
        """Take no frame more, write those handed over, publish every output (each even if another fails): the paths
        published and a line per output that failed."""
        return self.stage.close(publish=True)

    @property
    def failure(self) -> str | None:
        return self.stage.failure

    def tracks(self) -> dict[str, TrackCounts]:
        """Per tracked camera: its tracks (active, lost, total) after its last frame written."""
        return self.stage.tracks()

    def statistics(self, recent: bool = False) -> dict:
        """The output stage's figures: frames and rows written, per-frame write time (ms) and what it went to (ms per
        frame written, by writer label, "tracking" and "handover": to the formatting process and back), the frames
        queued and the queue's capacity, and the seconds the detection loops waited on a full queue."""
        stats = self.stage.statistics(recent)
        frames = max(stats["frames"], 1)
        return {"frames": stats["frames"], "rows": stats["rows"], "write_ms": _latency(stats["write_seconds"]),
                "write_ms_by_output": {label: round(1000.0 * seconds / frames, 3)
                                           for label, seconds in sorted(stats["seconds_by_output"].items())},
                "write_busy_seconds": float(stats["write_seconds"].sum()), "queue_depth": stats["queue_depth"],
                "queue_capacity": stats["queue_capacity"], "producer_wait_seconds": stats["wait_seconds"],
                "producer_waits": stats["waits"]}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM while the outputs are published would leave some published and some not: ignore them then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# -- the run -----------------------------------------------------------------------------------------------------


def open_cameras(specs: list[CameraSpec], timeout_s: float, warn: Warn | None,
                 strict: bool = False, reader_niceness: int = 0, decoder_threads: int = 0) -> list[FrameSource]:
    """Open every source at once (network sources wait up to the timeout each). A live source that cannot be opened
    while another camera can is retried with back-off once the run starts (said in a warning line); a file or
    folder that cannot be opened, every source failing, or ``strict`` is a one-line error naming the first, and the
    others are closed again. The opening threads run at ``reader_niceness``, so the decoder threads a video starts
    there inherit it (see ``lower_thread_priority``). Each video's decoder runs ``decoder_threads`` threads (0:
    OpenCV's choice)."""
    with ThreadPoolExecutor(max_workers=min(16, len(specs)), thread_name_prefix="open",
                            initializer=lower_thread_priority, initargs=(reader_niceness,)) as pool:
        futures = [pool.submit(open_source, spec.source, timeout_s, warn, decoder_threads) for spec in specs]
    sources: list[FrameSource | None] = []
    failures: list[tuple[CameraSpec, str]] = []
    for spec, future in zip(specs, futures):
        try:
            sources.append(future.result())
        except ReidctlError as exc:
            sources.append(None)
            failures.append((spec, str(exc)))
    retried = not strict and all(spec.live for spec, _ in failures) and len(failures) < len(specs)
    if failures and not retried:
        for source in filter(None, sources):
            source.close()
        errors = [reason if len(specs) == 1 else f"camera {spec.name}: {reason}" for spec, reason in failures]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ReidctlError(errors[0] + more)
    reasons = {spec.name: reason for spec, reason in failures}
    for spec, reason in failures:
        (warn or print)(f"warning: camera {spec.name}: {reason}; the other cameras start, it is retried with back-off")
    return [source or UnopenedSource(spec.source, reasons[spec.name]) for spec, source in zip(specs, sources)]


class _Run:
    """One run's shared state: the cameras, the outputs and what the detection loops measured."""

    def __init__(self, detector: Detector | DetectorPool, hub: Hub, outputs: Outputs, max_batch: int):
        self.detector, self.hub, self.outputs, self.max_batch = detector, hub, outputs, max_batch
        self.step_lock = threading.Lock()  # the batch loops (one per device) count their steps under it
        self.batch_sizes: Counter[int] = Counter()
        self.step_seconds = array("d")  # each detect step: upload, model, NMS and rescale of its batch
        self.step_ends = array("d")  # when each step ended (perf_counter seconds)
        self.step_frames = array("i")  # each step's batch size
        self.step_server = array("d")  # each step's seconds in the server's model (NaN: no server says)
        self.steps = 0
        self.step_busy_seconds = 0.0
        # The steps timed stage by stage (one in STAGE_SAMPLE_EVERY): each stage's seconds in a step and that step's
        # frames, appended together, so that a stage's time per frame is a ratio of sums (a mean of each step's ratio
        # would weigh a batch of one frame as much as one of eight, and it costs more a frame).
        self.stage_seconds: dict[str, array] = {stage: array("d") for stage in DETECT_STAGES}
        self.stage_frames: dict[str, array] = {stage: array("i") for stage in DETECT_STAGES}
        self.recent_batches: deque[int] = deque(maxlen=64)
        self.started = time.perf_counter()
        # through a server: its batches and its stages' seconds at the start (Runner.server_counters)
        self.server_before: tuple[dict[int, int] | None, dict[str, float] | None] = (None, None)
        self.shares_before: list[dict] | None = None

    def start(self) -> None:
        """The clock starts; a server's batches and each device's share are counted from here."""
        self.started = time.perf_counter()
        self.detector.load = DetectionLoad()  # this run's frames, not the warm-up's
        self.shares_before = self.detector.device_shares()
        if self.detector.runner.batches_remotely:
            self.server_before = self.detector.runner.server_counters()

    def finish(self, items: list[TimedFrame], results: list) -> None:
        """Hand a step's frames to the outputs' writer thread and return: it writes them while the next step runs."""
        done = time.perf_counter()
        frames = [(item, detections) for item, detections in zip(items, results)
                  if item.camera.max_frames is None or item.camera.frames < item.camera.max_frames]
        if not frames or not self.outputs.submit(frames):
            return  # the run stopped while this step ran: its frames are not finished
        for item, detections in frames:
            item.camera.record(done - item.decoded_at, len(detections), done)

    def batch_loop(self, ready: threading.Event, ended: threading.Event) -> None:
        """One detect step over the newest frame of every camera that has one (through a server: one request),
        until the run stops or every camera has ended; ``ended`` is set on the way out.

        First an untimed step of the largest batch, then ``ready``: what a thread pays once (a server connection's
        and shared memory region's set-up, a GPU library's handles) is paid before the cameras start, not by the
        first second's frames."""
        try:
            self.detector.detect_canvases(*warm_up_batch(self.detector, self.max_batch))
            ready.set()
            while not self.hub.stopping.is_set():
                batch = self.hub.take_batch(self.max_batch)
                if not batch:
                    if self.hub.done():
                        return
                    continue
                with self.step_lock:
                    self.steps += 1
                    timed = StageTimes() if self.steps % STAGE_SAMPLE_EVERY == 1 else None
                started = time.perf_counter()
                results = self.detector.detect_canvases([item.canvas for item in batch], [item.ratio for item in batch],
                                                        timed)
                server = self.detector.runner.last_server_seconds()  # this thread's own: read outside the lock
                with self.step_lock:
                    ended_at = time.perf_counter()
                    # Appended and trimmed alike, so that they stay aligned.
                    append_kept(self.step_seconds, seconds := ended_at - started, SAMPLES_KEPT)
                    append_kept(self.step_ends, ended_at, SAMPLES_KEPT)
                    append_kept(self.step_frames, len(batch), SAMPLES_KEPT)
                    append_kept(self.step_server, math.nan if server is None else server, SAMPLES_KEPT)
                    self.step_busy_seconds += seconds
                    self.batch_sizes[len(batch)] += 1
                    self.recent_batches.append(len(batch))
                    for stage, field_name in DETECT_STAGES.items():
                        if stage_seconds := getattr(timed, field_name, ()):
                            append_kept(self.stage_seconds[stage], sum(stage_seconds), STAGE_SAMPLES_KEPT)
                            append_kept(self.stage_frames[stage], len(batch), STAGE_SAMPLES_KEPT)
                self.finish(batch, results)
                self.hub.release(batch)
        except Exception as exc:  # noqa: BLE001  the run stops and says why; finished frames are published
            self.hub.stop(describe_error(exc))
        finally:
            ended.set()

    def server_since_start(self) -> tuple[dict[int, int] | None, dict[str, float] | None]:
        """Through a server, since the start (one read of its counters): the batches it ran by size, and ms a frame
        of each stage of its work where it says (each stage's time over those batches' frames, as the step's stages
        are counted). None each where it does not say, or has gone away (the run says why it stopped)."""
        batches_before, stages_before = self.server_before
        if batches_before is None:
            return None, None
        try:
            batches, stages = self.detector.runner.server_counters()
        except Exception:  # noqa: BLE001  a server that has gone away has no statistics
            return None, None
        if batches is None:
            return None, None
        sizes = {size: count - batches_before.get(size, 0) for size, count in batches.items()
                 if count > batches_before.get(size, 0)}
        frames = sum(size * count for size, count in sizes.items())
        if stages_before is None or stages is None or not frames:
            return sizes, None
        return sizes, {stage: 1000.0 * (seconds - stages_before.get(stage, 0.0)) / frames
                       for stage, seconds in stages.items()}

    def statistics(self, recent: bool) -> dict:
        """Per camera and in total: the live table's figures (recent=True: the last frames) or the summary's."""
        now = time.perf_counter()
        wall = now - self.started
        cameras = [_camera_statistics(camera, self.started, recent) for camera in self.hub.cameras]
        all_latencies = [s for camera in self.hub.cameras
                         for s in (camera.recent_latencies() if recent else camera.latencies)]
        frames = sum(camera.frames for camera in self.hub.cameras)
        # detect's steps by their frames (copied in one call: the batch loops count on while this reads)
        steps = Counter(self.recent_batches) if recent else dict(self.batch_sizes)
        # the batches the model ran: through a server its own, which may join several steps' requests
        sizes, server_stages = self.server_since_start() if self.detector.runner.batches_remotely else (steps, None)
        shares = self.detector.device_shares(since=self.shares_before)
        outputs = self.outputs.statistics()
        stages, busy = self._stages(wall, frames, outputs)
        tracks = self.outputs.tracks() if self.outputs.tracking else None
        total_tracks = {}
        if tracks is not None:
            for camera in cameras:
                camera["tracks"] = dataclasses.asdict(tracks.get(camera["name"], TrackCounts(0, 0, 0)))
            total_tracks = {"tracks": {key: sum(camera["tracks"][key] for camera in cameras)
                                       for key in ("active", "lost", "total")}}
        return {
            "cameras": cameras,
            "frames": frames,
            "detections": sum(camera.detections for camera in self.hub.cameras),
            "dropped": sum(camera.dropped for camera in self.hub.cameras),
            **({} if recent else {"by_second": self._by_second(), "slowest_steps": self._slowest_steps(),
                                  "server_ms_per_frame": server_stages}),
            "reconnects": sum(camera.reconnects for camera in self.hub.cameras),
            "fps": frames / wall if wall > 0 else None,
            "latency_ms": _latency(all_latencies),
            # a frame's time from its reader's hand-on until a step took it: behind its camera's frames in a step,
            # then for a batch loop (Hub.waits_behind_camera)
            "wait_ms": {part: _waits_ms(seconds) for part, seconds in self.hub.waits(512 if recent else None).items()},
            "step_ms": _latency(self.step_seconds[-512:] if recent else self.step_seconds),
            "wall_seconds": wall,
            "batch_sizes": {str(size): count for size, count in sorted(sizes.items())} if sizes is not None else None,
            "mean_batch": mean_size(sizes),
            "mean_step_frames": mean_size(steps),
            **({"per_device": shares} if shares is not None else {}),
            **({"servers": servers} if (servers := self.detector.describe().get("servers")) else {}),
            "stages_ms_per_frame": stages,
            "write_ms_by_output": outputs["write_ms_by_output"],  # which output the write stage's time goes to
            "busy": busy,
            "limiting_stage": max(busy, key=busy.get) if frames else None,
            **total_tracks,
        }

    def _by_second(self) -> dict[str, dict]:
        """Each second of the run, from its start: frames dropped and frames a paced reader handed on over a frame
        late (every camera's), the detect steps that ended, their frames, mean and longest time. Drops spread over
        the run point at a steady shortfall, drops bunched in one second at a stall; late frames at the readers
        (decoding behind the cameras' clocks), long steps at detection (one long step: a stall)."""
        seconds: dict[int, dict] = {}

        def second(at: float) -> dict:
            return seconds.setdefault(max(int(at - self.started), 0), {"dropped": 0, "late": 0, "steps": 0,
                                                                       "frames": 0, "step_ms": 0.0, "step_ms_max": 0.0})

        for camera in self.hub.cameras:
            for kind, times in (("dropped", camera.drop_times), ("late", camera.late_times)):
                for at in times:
                    second(at)[kind] += 1
        for step_seconds, ended, frames, _ in self._step_records():
            entry = second(ended)
            entry["steps"] += 1
            entry["frames"] += frames
            entry["step_ms"] += step_seconds * 1000.0
            entry["step_ms_max"] = max(entry["step_ms_max"], step_seconds * 1000.0)
        for entry in seconds.values():
            entry["step_ms"] = round(entry["step_ms"] / entry["steps"], 2) if entry["steps"] else None
            entry["step_ms_max"] = round(entry["step_ms_max"], 2)
        return {str(key): seconds[key] for key in sorted(seconds)}

    def _slowest_steps(self, count: int = 5) -> list[dict]:
        """The run's longest detect steps: when each ended (seconds from the start), its time and frames, and through
        a server that says it, the time its model spent on the step's request (``server_ms``; the rest was spent
        elsewhere: this process, the network, Triton's queue). A stall that ``by_second`` shows as one slow second
        is one step here, or many."""
        return [{"ended_s": round(ended - self.started, 3), "ms": round(seconds * 1000.0, 2), "frames": frames,
                 "server_ms": None if math.isnan(server) else round(server * 1000.0, 2)}
                for seconds, ended, frames, server in heapq.nlargest(count, self._step_records())]

    def _step_records(self) -> list[tuple[float, float, int, float]]:
        """Each kept step's (seconds, when it ended, frames, seconds in the server's model or NaN), copied under the
        lock the batch loops append under."""
        with self.step_lock:
            return list(zip(self.step_seconds, self.step_ends, self.step_frames, self.step_server))

    def _stages(self, wall: float, frames: int, outputs: dict) -> tuple[dict, dict]:
        """Each host stage's mean time per frame (ms), and how busy each kind of worker was (its share of the run's
        wall time; readers: the busiest camera's): the busiest names the stage that limits the run."""
        cameras = self.hub.cameras
        per_frame = {
            "decode": _mean_ms([s for c in cameras for s in c.decode_seconds[-STAGE_SAMPLES_KEPT:]]),
            "letterbox": _mean_ms([s for c in cameras for s in c.letterbox_seconds[-STAGE_SAMPLES_KEPT:]]),
            **{stage: _ms_per_frame(seconds[-STAGE_SAMPLES_KEPT:], self.stage_frames[stage][-STAGE_SAMPLES_KEPT:])
               for stage, seconds in self.stage_seconds.items()},
            "detect_step": (self.step_busy_seconds * 1000.0 / frames) if frames else None,
            "write": outputs["write_ms"]["mean"],
        }
        loops = batch_loops(self.detector)
        busy = {
            "readers": max((camera.reader_busy_seconds for camera in cameras), default=0.0) / wall,
            "detection": self.step_busy_seconds / (wall * loops),
            "outputs": outputs["write_busy_seconds"] / wall,  # one writer thread
        }
        return per_frame, {name: round(value, 3) for name, value in busy.items()}


def _mean_ms(seconds) -> float | None:
    return 1000.0 * sum(seconds) / len(seconds) if len(seconds) else None


def _ms_per_frame(seconds, frames) -> float | None:
    return 1000.0 * sum(seconds) / sum(frames) if len(frames) else None


def _latency(seconds) -> dict:
    if len(seconds) == 0:
        return dict.fromkeys(("p50", "p95", "p99", "mean"))
    stats = LatencySummary.from_samples(seconds)
    return {"p50": stats.p50_ms, "p95": stats.p95_ms, "p99": stats.p99_ms, "mean": stats.avg_ms}


def _waits_ms(seconds) -> dict:
    """P50, P99, the longest and the mean of waits (most are 0: a latency's summary would divide by them)."""
    if len(seconds) == 0:
        return dict.fromkeys(("p50", "p99", "max", "mean"))
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(ms.max()), "mean": float(ms.mean())}


def _camera_statistics(camera: Camera, started: float, recent: bool) -> dict:
    active = (camera.last_done - started) if camera.last_done else 0.0
    return {
        "name": camera.name,
        "source": camera.spec.source,
        "state": camera.state,
        "frames": camera.frames,
        "total": camera.total,
        "detections": camera.detections,
        "dropped": camera.dropped,
        "reconnects": camera.reconnects,
        "fps": camera.frames / active if active > 0 else None,
        "latency_ms": _latency(camera.recent_latencies() if recent else camera.latencies),
    }


def warm_up_batch(detector: Detector | DetectorPool, size: int) -> tuple[list[np.ndarray], list[float]]:
    """``size`` letterboxed synthetic canvases and their ratios, for an untimed call."""
    canvas, ratio = letterbox_frame(synthetic_frame(0, detector.input_size), detector.input_size)
    return [canvas] * size, [ratio] * size


def _warm_up(detector: Detector | DetectorPool, cameras: int, max_batch: int) -> None:
    """Run once on every device, untimed, what pays one-off costs (CUDA-graph capture per batch size, autotuning,
    connections, the pinned staging buffer), through the call the run makes."""
    on_gpu = detector.runner.device.type == "cuda"
    largest = min(max_batch, cameras) if on_gpu else 1
    canvases, ratios = warm_up_batch(detector, largest)
    for one in detector.members:
        for size in range(1, largest + 1):
            one.detect_canvases(canvases[:size], ratios[:size])
        one.runner.leave_thread()  # the batch loops send from threads of their own; this one sends no more


# Room above a frame's pixels for what an allocator adds to such a block (alignment, its header).
ALLOCATION_MARGIN = 1 << 16


def frames_from_the_heap(sources: list[FrameSource]) -> None:
    """Make and free one block the size of the largest frame before the readers start. glibc's malloc maps each block
    that large on its own, and unmaps it when freed, until it has freed one: then it raises its threshold and later
    blocks of that size come from its heaps. Unmapping changes the process's page tables under every thread; with
    the cameras' first frames all mapped and unmapped at once, every thread of the run waited on it."""
    largest = max((source.frame_bytes or 0 for source in sources), default=0)
    if largest:
        np.empty(largest + ALLOCATION_MARGIN, np.uint8)  # freed at once: what raises the threshold


# How long a thread may hold the interpreter lock while another waits for it. Each frame's trip returns from many
# native calls (decode, resize, a CUDA launch, a write), and each return waits for the lock until the holder's
# interval ends: at Python's default interval those waits alone outgrew the frame budget of the deployment's cameras
# (docs/PERFORMANCE.md, figures behind choices).
SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def _held(get: Callable[[], object], put: Callable[[object], None], value) -> Iterator[None]:
    """A process-wide setting at ``value`` (``put``) for the duration, then back to what ``get`` read before."""
    previous = get()
    put(value)
    try:
        yield
    finally:
        put(previous)


def short_lock_turns() -> contextlib.AbstractContextManager:
    """Python's thread switch interval at SWITCH_INTERVAL_S for the duration, then back to what it was."""
    return _held(sys.getswitchinterval, sys.setswitchinterval, SWITCH_INTERVAL_S)


@contextlib.contextmanager
def setup_frozen_out_of_collection() -> Iterator[None]:
    """Every object made before the run (imported modules, the model and its compiled code: hundreds of thousands)
    frozen out of the garbage collector's passes for the duration, then given back. A full pass over them holds the
    interpreter lock throughout, and every camera waits for it at once (docs/PERFORMANCE.md has what it cost). The
    run's own objects are still collected."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def model_threads_beside_readers(detector: Detector | DetectorPool, cameras: int) -> contextlib.AbstractContextManager:
    """A model on the CPU computes with at most the cores the cameras' readers leave (one each, at least one for
    the model) for the duration, then with what it had. Its threads wait for each other at every layer: one that
    a reader or the writer took its core from stalls them all, and a crowded run went at a third of its speed
    (docs/PERFORMANCE.md)."""
    if detector.runner.device.type != "cpu":
        return contextlib.nullcontext()
    threads = min(torch.get_num_threads(), max(1, (usable_cores() - cameras) // detector.concurrency))
    return _held(torch.get_num_threads, torch.set_num_threads, threads)


def opencv_threads(count: int) -> contextlib.AbstractContextManager:
    """OpenCV's threads, which split each resize of the readers' letterbox, at ``count`` for the duration (0: leave
    OpenCV's, one per core), then what they were."""
    return _held(cv2.getNumThreads, cv2.setNumThreads, count) if count > 0 else contextlib.nullcontext()


def batch_loops(detector: Detector | DetectorPool) -> int:
    """Steps that run at once: one per device in process; through servers, the requests their client keeps in
    flight, detection.triton.max_in_flight to each (a server joins its requests into its own batches)."""
    return detector.runner.requests_in_flight if detector.runner.batches_remotely else detector.concurrency


def default_max_batch(cameras: int, loops: int) -> int:
    """Every camera's frame in one step, shared by the steps that run at once; at most 16 a batch."""
    return min(math.ceil(cameras / loops), MAX_DEFAULT_BATCH)


@dataclass
class RunCores:
    """A run's CPU cores: detect's, and those of a bundled server started here on cores of its own
    (``setup-triton --start --cpus``); the CPU time detect and the local servers it uses spent in the run; and the
    whole host's CPU, second by second (what else kept it busy, what the hypervisor stole)."""

    detect: list[int]
    server: list[int]
    server_pids: list[int]  # the processes of the bundled servers started here that the run goes through
    used_before: tuple[float, dict[int, float]] | None = None  # at the run's start
    host: HostCpuWatch = field(default_factory=HostCpuWatch)

    @classmethod
    def of(cls, config, backend: str | None) -> RunCores:
        mine = available_cpus()
        servers = local_servers(config.detection.triton.urls) if (backend or config.detection.backend) == "triton" \
            else []
        server = {cpu for state in servers for cpu in state.cpus} & mine
        return cls(sorted(mine - server or mine), sorted(server),
                   [pid for state in servers for pid in process_tree(state.pid)])

    def start(self) -> None:
        self.used_before = own_cpu_seconds(), cpu_seconds_by_process(self.server_pids)
        self.host.start()

    def summary(self, wall: float) -> dict:
        """Each side's cores (detect's as its thread has them now) and the cores it kept busy on average since
        ``start`` (the server's: None without one started here); the host's CPU from ``start`` to its ``stop``
        (None where it cannot be read)."""
        busy = [None, None]
        if self.used_before is not None and wall > 0:
            own, servers = self.used_before
            busy = [(own_cpu_seconds() - own) / wall,
                    cpu_seconds_between(servers, cpu_seconds_by_process(self.server_pids)) / wall]
        return {"cpus": {"detect": cpu_list_text(available_cpus()), "server": cpu_list_text(self.server) or None},
                "cpu_cores_busy": {"detect": busy[0], "server": busy[1] if self.server_pids else None},
                "host_cpu": self.host.summary()}


def run_detect(
    config,
    specs: list[CameraSpec],
    request: OutputRequest,
    options: DetectOptions | None = None,
    backend: str | None = None,
    warn: Warn = print,
    on_update: Callable[[dict], None] | None = None,
    detector: Detector | DetectorPool | None = None,
    sources: list[FrameSource] | None = None,
) -> DetectResult:
    """Detect on every camera until each has ended or the run stops; publish every finished frame either way.

    ``warn`` takes warning lines; ``on_update`` gets the live statistics about every half second (main thread).
    ``detector``: one the caller made and keeps (runs one after another share it), else one of ``config`` is made
    and closed here. ``sources``: one open source per spec (bench's frames in memory), played instead of opening
    the specs' sources. Errors before the first frame (a source that cannot be opened, a bad output path, a backend
    that cannot run) raise a ReidctlError and write nothing.
    """
    owned = detector is None
    options = options or DetectOptions()
    plan = plan_outputs([spec.name for spec in specs], request)
    cores = RunCores.of(config, backend)
    with thread_on(cores.detect if cores.server else None):  # threads started from here on inherit it
        if plan.track and config.detection.conf_threshold > config.tracking.low_thresh:
            warn(f"warning: detection.conf_threshold {config.detection.conf_threshold:g} is above "
                 f"tracking.low_thresh {config.tracking.low_thresh:g}: the second association (low-score boxes) "
                 "gets no detections")
        input_warn = None if options.strict else warn  # None: an unreadable image or a truncated video is an error
        reader_cores = cores_per_reader(len(specs))  # each reader's decoder and letterbox on its share of the cores
        if sources is None:
            sources = open_cameras(specs, options.timeout_s, input_warn, options.strict,
                                   config.detection.reader_niceness, reader_cores)
        hub = Hub()
        hub.reader_niceness = config.detection.reader_niceness
        hub.batch_window_s = config.detection.batch_window_ms / 1000
        cameras = [
            Camera(spec, source, hub, _reopen(spec, options.timeout_s, input_warn, reader_cores), warn,
                   options.realtime, options.max_frames, config.detection.camera_buffer)
            for spec, source in zip(specs, sources)
        ]
        left_running = False
        try:
            detector = detector or create_detector(config, backend, warn)
            max_batch = options.max_batch or default_max_batch(len(cameras), batch_loops(detector))
            try:
                _warm_up(detector, len(cameras), max_batch)
            except (ReidctlError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001  e.g. a CUDA error: the backend cannot run here
                raise ReidctlError(f"{detector.name} cannot run here: {describe_error(exc)}") from exc
            frames_from_the_heap(sources)
            with short_lock_turns(), model_threads_beside_readers(detector, len(cameras)), \
                    opencv_threads(reader_cores), setup_frozen_out_of_collection():
                result, left_running = _run(detector, hub, cameras, plan, max_batch, on_update, config.tracking,
                                            cores)
            return result
        finally:
            hub.stop()
            for camera in cameras:
                if not camera.started:
                    camera.source.close()
            if owned and detector is not None and not left_running:  # never free a model that a stuck step still uses
                detector.close()


def _reopen(spec: CameraSpec, timeout_s: float, warn: Warn | None, decoder_threads: int) -> Callable[[], FrameSource]:
    return lambda: open_source(spec.source, timeout_s, warn, decoder_threads)


def _run(detector: Detector | DetectorPool, hub: Hub, cameras: list[Camera], plan: OutputPlan, max_batch: int,
         on_update: Callable[[dict], None] | None, tracking: TrackingConfig,
         cores: RunCores) -> tuple[DetectResult, bool]:
    outputs = Outputs(plan, cameras, on_failure=hub.stop, tracking=tracking)
    run = _Run(detector, hub, outputs, max_batch)
    # The main thread waits on events, not Thread.join: before Python 3.13, a join that Ctrl-C interrupts marks a
    # running thread as ended, and leaving the interpreter under a step still running aborts the process.
    loops_ended: list[threading.Event] = []
    workers: list[threading.Thread] = []
    stopped = None
    try:
        loops_ready = [threading.Event() for _ in range(batch_loops(detector))]
        loops_ended = [threading.Event() for _ in loops_ready]
        workers = [threading.Thread(target=run.batch_loop, args=(ready, ended), name=f"detect-batches-{i}",
                                    daemon=True)
                   for i, (ready, ended) in enumerate(zip(loops_ready, loops_ended))]
        for worker in workers:
            worker.start()
        for ready, ended in zip(loops_ready, loops_ended):  # each loop's own warm-up step, or its failure
            while not (ready.wait(UPDATE_INTERVAL_S) or ended.is_set()):
                pass
        run.start()
        cores.start()
        hub.letterbox_size = detector.input_size  # the readers letterbox their frames, in parallel
        if not hub.stopping.is_set():
            for camera in cameras:
                camera.start()
        while not all(ended.is_set() for ended in loops_ended):
            deadline = time.monotonic() + UPDATE_INTERVAL_S
            for ended in loops_ended:  # back as soon as the last batch loop ends: the run's wall time has no idle tail
                ended.wait(max(0.0, deadline - time.monotonic()))
            if on_update:
                on_update(run.statistics(recent=True))
            if hub.stopping.is_set():
                break
        stopped = hub.failure
    except KeyboardInterrupt as exc:
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
    finally:
        with _signals_held():
            hub.stop()
            cores.host.stop()  # the host's figures end with the run's frames, not after the outputs are published
            for worker, ended in zip(workers, loops_ended):
                if worker.ident is None:  # never began (Ctrl-C while the run started): nothing to wait for
                    ended.set()
            written, publish_errors = outputs.close()
            deadline = time.monotonic() + WORKER_JOIN_S
            for ended in loops_ended:
                ended.wait(max(0.0, deadline - time.monotonic()))
            for camera in cameras:
                camera.join(max(0.0, deadline - time.monotonic()))
    # A failed output (a full disk) is an error, even where Ctrl-C stopped the run first.
    failures = list(dict.fromkeys(f for f in (hub.failure, outputs.failure, *publish_errors) if f))
    stopped = "; ".join(failures) if failures else stopped
    load = detector.load
    summary = {**detector.describe(), **run.statistics(recent=False),
               **cores.summary(time.perf_counter() - run.started), "outputs": outputs.statistics(),
               "detection_load": {"candidates_per_frame": load.candidates_per_frame,
                                  "kept_per_frame": load.kept_per_frame}}
    if (host := summary["host_cpu"]) is not None:  # were the frames lost to a shortage of cores?
        host["dropped_short_of_cores"] = counted_short_of_cores(
            {second: counts["dropped"] for second, counts in summary["by_second"].items()}, host)
    peak = detector.peak_memory_bytes()
    summary.update(gpu_memory_peak_mib=peak / 2**20 if peak is not None else None,
                   interrupted=stopped in ("interrupted", "terminated"), stopped=stopped)
    if plan.summary_json:
        write_text_atomic(plan.summary_json, json.dumps(summary, indent=2))
        written.append(plan.summary_json)
    latencies = {camera.name: list(camera.latencies) for camera in cameras}
    return DetectResult(summary, written, stopped, latencies), not all(ended.is_set() for ended in loops_ended)

