"""One Detector for every backend.

A backend contributes a *runner* (Polygraphy's split: a loader opens or builds the artifact, a runner executes it).
The Detector owns everything around it, shared by all backends: letterbox, normalisation (where the runner
wants float input), decoding of raw head outputs, NMS and rescaling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from reidctl.core.artifact_checks import checked
from reidctl.core.device import PinnedStaging, on_device
from reidctl.core.frames import rescale
from reidctl.core.postprocess import select_detections
from reidctl.core.preprocess import letterbox, normalize
from reidctl.core.registry import get_backend
from reidctl.errors import BackendUnavailable, ReidctlError
from reidctl.models.yolox import decode_predictions


class Runner(ABC):
    """Executes one model artifact. Input and output stay on ``device``.

    ``input_format`` says what ``infer`` takes:
      "canvas": uint8 (B, H, W, 3) BGR letterboxed frames (the runner normalises, e.g. inside a CUDA graph or server)
      "tensor": normalised float (B, 3, H, W) in ``input_dtype``
    ``infer`` returns (B, anchors, 5 + classes); ``decoded`` says whether boxes are already in input pixels.
    A runner whose model applies the thresholds and NMS itself (a server) sets ``returns_detections``: its
    ``infer`` returns each frame's ``select_detections`` rows, and the Detector only rescales them.
    ``create_detector`` checks every runner against the config (reidctl.core.artifact_checks): the input size its
    artifact was built for, then ``check_config``.
    """

    name: str = "runner"
    artifact_name: str = "the model"  # what it runs, as an error names it: a file, a server's model
    input_size: tuple[int, int] | None = None  # (height, width) its artifact takes; None: any
    input_format: str = "tensor"
    input_dtype: torch.dtype = torch.float32
    decoded: bool = True
    returns_detections: bool = False
    device: torch.device = torch.device("cpu")
    batches_remotely: bool = False  # True: thread-safe client of a server that forms batches (Triton)

    @abstractmethod
    def infer(self, batch: torch.Tensor) -> torch.Tensor | list[np.ndarray]: ...

    def input_array(self, frames: int) -> np.ndarray | None:
        """Where the calling thread may write its next batch of ``frames`` uint8 canvases (a host runner of the
        "canvas" format), which its next ``infer`` then reads in place; None: the Detector makes the batch."""
        return None

    def describe(self) -> dict:
        """What runs, for tables and JSON (precision, device, artifact...)."""
        return {"backend": self.name, "device": str(self.device)}

    def peak_memory_bytes(self) -> int | None:
        """Peak accelerator memory of the process running the model, if measurable."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return None

    def batch_counts(self) -> dict[int, int] | None:
        """Batches the serving side has executed so far, by batch size (None where no server batches)."""
        return None

    def server_counters(self) -> tuple[dict[int, int] | None, dict[str, float] | None]:
        """``batch_counts`` and the seconds the serving side has spent so far in each stage of its work (None where
        it does not say), read together."""
        return self.batch_counts(), None

    def last_server_seconds(self) -> float | None:
        """Seconds the serving side spent on the calling thread's last ``infer`` (None where none says)."""
        return None

    def check_config(self, detection) -> None:
        """Raise where the artifact cannot serve ``detection`` for a reason of its own, beyond its input size."""

    def leave_thread(self) -> None:
        """The calling thread makes no more calls: free what the runner keeps for that thread alone (a server
        client's seat and shared memory regions)."""

    def close(self) -> None:
        """Free what the runner holds; safe to call twice."""


@dataclass
class StageTimes:
    """Seconds spent in each stage, one entry per call (the GPU is synchronised between stages)."""

    preprocess: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    postprocess: list[float] = field(default_factory=list)


@dataclass
class DetectionLoad:
    """The load NMS has faced so far: frames, candidates (anchors scored at or above conf_threshold, before NMS)
    and detections kept (those returned). ``candidates`` is None where a server ran NMS: it returns only its rows."""

    frames: int = 0
    candidates: int | None = 0
    kept: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, candidates: Sequence[int] | None, kept: Sequence[int]) -> None:
        with self._lock:  # a Detector serving a server's client threads counts from several threads
            self.frames += len(kept)
            self.kept += sum(kept)
            known = candidates is not None and self.candidates is not None
            self.candidates = self.candidates + sum(candidates) if known else None

    @property
    def candidates_per_frame(self) -> float | None:
        return self.candidates / self.frames if self.frames and self.candidates is not None else None

    @property
    def kept_per_frame(self) -> float | None:
        return self.kept / self.frames if self.frames else None

    def merge(self, other: DetectionLoad) -> None:
        """Count ``other``'s frames too (a run that counted its own, e.g. a `run_detect` run)."""
        with self._lock:
            self.frames += other.frames
            self.kept += other.kept
            known = other.candidates is not None and self.candidates is not None
            self.candidates = self.candidates + other.candidates if known else None


class Detector:
    """``detect(frame) -> (N, 7)``, ``detect_batch(frames)`` and ``detect_canvases(canvases, ratios)`` (frames
    letterboxed beforehand on the host) over any runner; a context manager.

    ``load`` accumulates candidates and kept detections per frame over every call (replace it to start afresh).
    """

    def __init__(
        self,
        runner: Runner,
        input_size: tuple[int, int],
        conf_threshold: float = 0.01,
        nms_threshold: float = 0.7,
        stream: torch.cuda.Stream | None = None,
    ):
        self.runner = runner
        self.stream = stream  # a GPU Detector's own CUDA stream (None: the caller's current stream)
        self.input_size = tuple(input_size)
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.stage_times: StageTimes | None = None  # set to StageTimes() to record per-stage timings
        self.load = DetectionLoad()
        self._staging: PinnedStaging | None = None  # detect_canvases' batches on their way to a GPU
        if runner.device.type == "cuda":
            with on_device(runner.device):
                self._staging = PinnedStaging((*self.input_size, 3), runner.device)
        self._served = [0, 0]  # batches, frames
        self._served_lock = threading.Lock()

    concurrency = 1  # batches that may run at once (a DetectorPool: one per device)

    @property
    def name(self) -> str:
        return self.runner.name

    @property
    def members(self) -> list[Detector]:
        """Every Detector that runs batches (a pool's: one per device and batch in flight): what a warm-up runs."""
        return [self]

    def describe(self) -> dict:
        return self.runner.describe()

    def peak_memory_bytes(self) -> int | None:
        return self.runner.peak_memory_bytes()

    @property
    def served(self) -> tuple[int, int]:
        """Batches and frames this Detector has run."""
        with self._served_lock:
            return self._served[0], self._served[1]

    def device_shares(self, since: list[dict] | None = None) -> list[dict] | None:
        """Batches and frames each device has served (None: one device serves everything)."""
        return None

    def _sync(self) -> None:
        """Wait for this call's GPU work: its stream's, not the device's, which would count another step's model in
        this one's stage when two batches are in flight."""
        if self.runner.device.type == "cuda":
            torch.cuda.current_stream(self.runner.device).synchronize()

    def _mark(self, stage: str, start: float, times: StageTimes | None) -> float:
        if times is None:
            return start
        self._sync()
        now = time.perf_counter()
        getattr(times, stage).append(now - start)
        return now

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        for frame in frames:
            if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                    and frame.shape[2] == 3):
                raise ReidctlError("frames must be uint8 HxWx3 BGR arrays")
        if not frames:
            return []  # nothing to run: an empty batch would capture an empty CUDA graph
        start = time.perf_counter()
        with self._placed():
            canvas, ratios = letterbox(frames, self.input_size, self.runner.device)
            return self._detect(canvas, ratios, start, self.stage_times)

    def detect_canvases(self, canvases: Sequence[np.ndarray], ratios: Sequence[float],
                        stage_times: StageTimes | None = None) -> list[np.ndarray]:
        """Detect on frames already letterboxed on the host (``preprocess.letterbox_into``): uint8 (H, W, 3) BGR
        canvases of the input size and each frame's ratio. On a GPU they travel in one copy per batch.
        ``stage_times``: time this call's stages into it (besides ``self.stage_times``)."""
        shape = (*self.input_size, 3)
        if len(canvases) != len(ratios) or not all(
            isinstance(c, np.ndarray) and c.dtype == np.uint8 and c.shape == shape for c in canvases
        ):
            raise ReidctlError(f"canvases must be uint8 {shape[0]}x{shape[1]}x3 arrays, one ratio each")
        if not canvases:
            return []
        start = time.perf_counter()
        with self._placed():
            return self._detect(self._upload(canvases), list(ratios), start, stage_times or self.stage_times)

    @contextlib.contextmanager
    def _placed(self):
        """The runner's device made current for the call, and this Detector's stream if it has one: every copy,
        kernel and graph replay of the call then queues on it, so two Detectors on one GPU overlap."""
        own_stream = torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()
        with on_device(self.runner.device), own_stream:
            yield

    def _upload(self, canvases: Sequence[np.ndarray]) -> torch.Tensor:
        """Host canvases -> one (B, H, W, 3) batch on the runner's device (on a GPU: one copy from pinned memory;
        on the host: written where the runner reads it, a server's shared memory region, if it has such a place)."""

        def fill(batch: np.ndarray) -> None:
            # One native call for the whole batch, on one thread: each call that gives up the interpreter lock waits
            # to take it back behind the cameras' readers (a copy per frame waited once per frame), and torch's CPU
            # threads would compete with the readers for cores.
            cv2.vconcat(list(canvases), dst=batch.reshape(-1, *batch.shape[2:]))

        if self._staging is not None:
            return self._staging.to_device(len(canvases), lambda slots: fill(slots.numpy()))[0]
        batch = self.runner.input_array(len(canvases))
        if batch is None:
            batch = np.empty((len(canvases), *self.input_size, 3), dtype=np.uint8)
        fill(batch)
        return torch.from_numpy(batch)

    def _detect(self, canvas: torch.Tensor, ratios: list[float], start: float,
                times: StageTimes | None) -> list[np.ndarray]:
        """The letterboxed batch on the runner's device -> each frame's (N, 7) detections in frame pixels."""
        batch = canvas if self.runner.input_format == "canvas" else normalize(canvas, self.runner.input_dtype)
        start = self._mark("preprocess", start, times)
        predictions = self.runner.infer(batch)
        start = self._mark("inference", start, times)
        if self.runner.returns_detections:
            detections, candidates = rescale(predictions, ratios, self.conf_threshold), None
        else:
            if not self.runner.decoded:
                predictions = decode_predictions(predictions.float(), self.input_size)
            selection = select_detections(predictions, self.conf_threshold, self.nms_threshold)
            detections, candidates = rescale(selection.rows, ratios), selection.candidates
        self._mark("postprocess", start, times)
        self.load.add(candidates, [len(rows) for rows in detections])
        with self._served_lock:
            self._served[0] += 1
            self._served[1] += len(detections)
        return detections

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DetectorPool:
    """Several Detectors behind the Detector's calls: one per device, and on a GPU one per batch in flight
    (``detection.batches_in_flight``), each with its own runner and CUDA stream, so that one batch's host work
    (letterbox, copies, rescale) overlaps the next one's model. Each call runs on an idle member (it waits while
    every member is busy), so ``concurrency`` threads calling at once run that many batches at once.

    ``runner`` is the first member's: every member runs the same backend, so its kind (input format, remote
    batching) stands for all of them.
    """

    def __init__(self, detectors: Sequence[Detector], devices: Sequence[str]):
        """``detectors[i]`` runs on ``devices[i % len(devices)]`` (devices as asked for: ONNX Runtime's runner holds
        its batches on the host)."""
        self.detectors = list(detectors)
        self._devices = list(devices)
        self.runner = self.detectors[0].runner
        self.input_size = self.detectors[0].input_size
        self.concurrency = len(self.detectors)
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()  # FIFO: one thread's calls go round the members
        for index in range(len(self.detectors)):
            self._idle.put(index)
        self.load = self.detectors[0].load  # one count for every member (DetectionLoad is thread-safe)

    @property
    def name(self) -> str:
        return self.runner.name

    @property
    def members(self) -> list[Detector]:
        return self.detectors

    @property
    def load(self) -> DetectionLoad:
        return self._load

    @load.setter
    def load(self, load: DetectionLoad) -> None:
        self._load = load
        for detector in self.detectors:
            detector.load = load

    @property
    def stage_times(self) -> StageTimes | None:
        return self.detectors[0].stage_times

    @stage_times.setter
    def stage_times(self, times: StageTimes | None) -> None:
        for detector in self.detectors:
            detector.stage_times = times

    def devices(self) -> list[str]:
        return list(self._devices)

    def describe(self) -> dict:
        devices = self.devices()
        in_flight = len(self.detectors) // len(devices)
        return {**self.runner.describe(), "device": ",".join(devices), "devices": devices,
                "batches_in_flight": in_flight}

    def peak_memory_bytes(self) -> int | None:
        """The largest device's peak: what has to fit on one card."""
        peaks = [peak for detector in self.detectors if (peak := detector.peak_memory_bytes()) is not None]
        return max(peaks) if peaks else None

    def device_shares(self, since: list[dict] | None = None) -> list[dict] | None:
        """Batches and frames each device has served, or served after the shares ``since`` (None: the members
        share one device)."""
        if len(self._devices) == 1:
            return None
        totals = [[0, 0] for _ in self._devices]
        for index, detector in enumerate(self.detectors):
            batches, frames = detector.served
            totals[index % len(self._devices)][0] += batches
            totals[index % len(self._devices)][1] += frames
        if since is not None:
            totals = [[batches - then["batches"], frames - then["frames"]]
                      for (batches, frames), then in zip(totals, since)]
        return [{"device": device, "batches": batches, "frames": frames}
                for device, (batches, frames) in zip(self._devices, totals)]

    def _on_idle_member(self, call: Callable[[Detector], list[np.ndarray]]) -> list[np.ndarray]:
        index = self._idle.get()
        try:
            return call(self.detectors[index])
        finally:
            self._idle.put(index)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._on_idle_member(lambda detector: detector.detect_batch(frames))

    def detect_canvases(self, canvases: Sequence[np.ndarray], ratios: Sequence[float],
                        stage_times: StageTimes | None = None) -> list[np.ndarray]:
        return self._on_idle_member(lambda detector: detector.detect_canvases(canvases, ratios, stage_times))

    def close(self) -> None:
        for detector in self.detectors:
            detector.close()

    def __enter__(self) -> DetectorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def create_detector(
    config, backend: str | None = None, warn: Callable[[str], None] = print
) -> Detector | DetectorPool:
    """The Detector for ``config.detection`` on ``backend`` (default: the config's backend); warnings go to ``warn``.
    A list of devices (detection.device 'cuda:0,1', 'all'), or a GPU with detection.batches_in_flight above 1, gives
    a DetectorPool: on each device one in-process runner per batch in flight, each Detector on its own CUDA stream.
    Every runner is checked against the config here (``checked``), whatever its backend.
    """
    from reidctl.core.device import resolve_devices

    det = config.detection
    chosen = get_backend(backend or det.backend)
    reason = chosen.availability()
    if reason:
        raise BackendUnavailable(f"backend '{chosen.name}' is unavailable: {reason}")
    devices = resolve_devices(det.device)
    in_flight = det.batches_in_flight if devices[0].type == "cuda" else 1  # a CPU runner already uses every core
    pooled = len(devices) * in_flight > 1
    detectors: list[Detector] = []
    with contextlib.ExitStack() as on_failure:  # closes every runner made so far, unless the whole build succeeds
        for device in [device for _ in range(in_flight) for device in devices]:  # interleaved: calls go round the GPUs
            one = dataclasses.replace(config, detection=dataclasses.replace(det, device=str(device)))
            runner = checked(chosen.make_runner(one, warn), det)
            on_failure.callback(runner.close)
            if runner.batches_remotely:  # a server forms the batches and keeps them in flight itself
                if len(devices) > 1:
                    raise ReidctlError(f"a device list runs in-process backends only; '{chosen.name}' runs in a server")
                detector = Detector(runner, det.input_size, det.conf_threshold, det.nms_threshold)
                on_failure.pop_all()
                return detector
            stream = torch.cuda.Stream(device) if pooled and device.type == "cuda" else None
            detectors.append(Detector(runner, det.input_size, det.conf_threshold, det.nms_threshold, stream))
        on_failure.pop_all()
    if len(detectors) == 1:
        return detectors[0]
    return DetectorPool(detectors, [str(device) for device in devices])
