"""bytetrack_pytorch: a Triton python-backend model that runs reidctl's PyTorch runner and its NMS.

Input  "frames":         uint8 (B, H, W, 3) letterboxed BGR frames (the runner normalises them on its device).
Output "detections":     float32 (B, N, 7) rows x1, y1, x2, y2 (input-canvas pixels), obj_conf, class_conf,
                         class_id, after the configured conf_threshold and NMS; zero rows pad a frame's list.
Output "num_detections": int32 (B, 1), the real rows of each frame.
Output "server_seconds": float32 (B, 1), the seconds from `execute`'s call on the frame's request to its response
                         (the same for a request's frames): a client tells a slow request's time here from its time
                         elsewhere (the network, Triton's queue, its own process) without sharing a clock.

The whole detector but the letterbox runs here, so a response is a few rows instead of every anchor and a client
runs no kernels (a second process's kernels would time-slice the GPU with this one); at most it copies its frames
into the GPU's memory. Three threads share the work:
- `execute` copies the requests' frames to the GPU (a copy stream; from the GPU's own memory where a client put
  them in CUDA shared memory) and returns: the frames wait here, not in Triton's queue, and Triton hands over the
  next requests at once.
- A batch of every frame waiting (up to max_batch_size) starts when the GPU's previous batch is done with the
  model and fewer than BATCHES_IN_FLIGHT batches are between their start and their last response: at once in
  `execute` when both hold (an idle server adds no hand-over), else from the launcher thread. The requests that
  arrive while a batch runs join the next one, so that under load the batches fill up.
- The finisher runs a batch's NMS and answers each request through its response sender, while the next batch's
  model runs. The in-flight bound keeps a slow finisher (the worst load's 8,400 rows a frame) from letting batches
  of one frame start as fast as they come.
One CUDA graph per batch size on the GPU (fp16 there, optionally torch.compile'd), fp32 on the CPU. Triton's own
statistics count `execute` calls, which only hand frames over: the batches run are the counter BATCH_METRIC on
the server's metrics port, labelled by their frames; STAGE_METRIC counts the seconds of each stage of the work.
`reidctl setup-triton` copies this file into the repository and writes config.pbtxt, whose parameters name the
checkpoint, model type, test size, device, precision and thresholds.
"""

import collections
import gc
import json
import os
import queue
import site
import sys
import threading
import time
from dataclasses import dataclass


def _use_launching_environment() -> None:
    """The backend stub embeds Python in isolated mode, so PYTHONPATH is ignored: take the paths of the
    interpreter that started the server (reidctl, torch) from REIDCTL_SYS_PATH, ahead of the stub's own."""
    entries = [entry for entry in os.environ.get("REIDCTL_SYS_PATH", "").split(os.pathsep) if entry]
    before = list(sys.path)
    for entry in entries:
        site.addsitedir(entry)  # also runs site-packages' .pth files (editable installs)
    added = [entry for entry in sys.path if entry not in before]
    sys.path[:] = added + before


_use_launching_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from torch.utils.dlpack import to_dlpack  # noqa: E402

from reidctl.backends.pytorch import make_runner  # noqa: E402
from reidctl.config import override  # noqa: E402
from reidctl.core.device import PinnedStaging  # noqa: E402
from reidctl.core.postprocess import DETECTION_COLUMNS, select_detections  # noqa: E402
from reidctl.triton.placement import instance_device  # noqa: E402
from reidctl.triton.repository import (  # noqa: E402
    BATCH_METRIC,
    PYTHON_COUNT_OUTPUT,
    PYTHON_INPUT,
    PYTHON_OUTPUT,
    PYTHON_SERVER_OUTPUT,
    SERVER_STAGES,
    STAGE_METRIC,
    config_from_parameters,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
BATCHES_IN_FLIGHT = 2  # one batch's model runs while the one before it is finished (NMS, responses)
WAITING_BATCHES = 2  # `execute` holds its requests (and Triton queues the next) while this many full batches wait


@dataclass
class _Waiting:
    """A request's frames, held until a batch takes them."""

    sender: object
    frames: torch.Tensor
    copied: torch.cuda.Event | None  # their copy to the GPU (None on the CPU)
    called_at: float  # perf_counter seconds: execute's call on the request
    staged_at: float


class _Counters:
    """Batches run per size (the server's metric BATCH_METRIC) and the seconds of each stage (STAGE_METRIC)."""

    def __init__(self, model_name: str, instance: str):
        counter = pb_utils.MetricFamily.COUNTER
        self.batch_family = pb_utils.MetricFamily(name=BATCH_METRIC, description="batches run, by frames", kind=counter)
        stage_family = pb_utils.MetricFamily(name=STAGE_METRIC, description="seconds of each stage", kind=counter)
        self.labels = {"model": model_name, "instance": instance}
        self.batches: dict[int, object] = {}
        self.stages = {stage: stage_family.Metric(labels={**self.labels, "stage": stage}) for stage in SERVER_STAGES}
        self.families = [self.batch_family, stage_family]

    def count(self, frames: int) -> None:
        if frames not in self.batches:
            self.batches[frames] = self.batch_family.Metric(labels={**self.labels, "frames": str(frames)})
        self.batches[frames].increment(1)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage].increment(max(0.0, seconds))

    def close(self) -> None:
        self.batches.clear()  # Triton wants a family's metrics gone before the family
        self.stages.clear()
        self.families.clear()


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        config = config_from_parameters(parameters)
        device = instance_device(config.detection.device, args["model_instance_kind"], args["model_instance_device_id"])
        config = override(config, device=device)
        # Made current before any CUDA work: pinned buffers, side streams and graph capture otherwise start on
        # GPU 0 whichever GPU Triton placed this instance on.
        self.gpu = device if device.startswith("cuda:") else None
        if self.gpu is not None:
            torch.cuda.set_device(self.gpu)
        self.runner = make_runner(config, warn=pb_utils.Logger.log_warn)
        self.conf_threshold = config.detection.conf_threshold
        self.nms_threshold = config.detection.nms_threshold
        height, width, _ = pb_utils.get_input_config_by_name(model_config, PYTHON_INPUT)["dims"]
        self.max_batch = model_config["max_batch_size"]
        device = self.runner.device
        self.staging = self.copy_stream = self.model_stream = self.finish_stream = None
        if device.type == "cuda":
            # Host work here is the staging copy: a few threads copy a batch faster than one,
            # while a full pool of spinning OpenMP threads would take cores from the clients.
            torch.set_num_threads(4)
            self.staging = PinnedStaging((height, width, 3), device, frames=self.max_batch, buffers=2)
            # Frames go to the GPU while a batch runs; one batch's NMS overlaps the next batch's model.
            self.copy_stream, self.model_stream, self.finish_stream = (torch.cuda.Stream(device) for _ in range(3))
        if self.runner.use_cuda_graph:
            # Capture every batch size's graph now: a batch may have any size up to the maximum, and a capture
            # inside a request would stall the whole batch.
            for size in range(1, self.max_batch + 1):
                self.runner.infer(torch.zeros((size, height, width, 3), dtype=torch.uint8, device=device))
        self.counters = _Counters(args["model_name"], args["model_instance_name"])
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.waiting_frames = 0
        self.changed = threading.Condition()  # guards waiting, waiting_frames and closing
        self.closing = False
        self.launching = threading.Lock()
        self.in_flight = threading.BoundedSemaphore(BATCHES_IN_FLIGHT)  # released by the finisher
        self.model_done: torch.cuda.Event | None = None  # the last batch's model, on the GPU
        self.started: queue.Queue = queue.Queue()
        self.threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for target, name in ((self._launch_batches, "reidctl-launcher"), (self._finish_batches, "reidctl-finisher"))
        ]
        # What loading made (torch, the compiled model) stays out of the garbage collector's passes: a full pass over
        # it holds this process's interpreter lock throughout, and every request waits.
        gc.collect()
        gc.freeze()
        for thread in self.threads:
            thread.start()

    def execute(self, requests):
        """Stage the requests' frames for the next batch (started here when the GPU and a slot are free, else by the
        launcher) and return; the finisher answers each request."""
        called = time.perf_counter()
        senders = [request.get_response_sender() for request in requests]
        try:
            # DLPack in and out: with numpy >= 2 the stub returns empty tensors built from ndarrays.
            frames = [
                torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, PYTHON_INPUT).to_dlpack()) for r in requests
            ]
            # Copied before returning: Triton frees the request tensors when execute returns.
            with torch.inference_mode():
                if self.staging is None:
                    staged, copied = torch.cat([f.cpu() for f in frames]), None
                elif any(f.is_cuda for f in frames):  # a client's CUDA shared memory: one copy on the GPU
                    with torch.cuda.stream(self.copy_stream):
                        staged = torch.cat([f.to(self.runner.device) for f in frames])
                    copied = self.copy_stream.record_event()
                    copied.synchronize()
                else:
                    with torch.cuda.stream(self.copy_stream):
                        staged, copied = self.staging.to_device(
                            sum(len(f) for f in frames), lambda slots: torch.cat(frames, out=slots)
                        )
        except Exception as exc:  # every request gets the failure instead of the server seeing a crash
            _fail(senders, exc)
            return None
        staged_at = time.perf_counter()
        self.counters.add("staging", staged_at - called)
        with self.changed:
            first = 0
            for sender, request_frames in zip(senders, frames):
                self.waiting.append(_Waiting(sender, staged[first : first + len(request_frames)], copied, called,
                                             staged_at))
                first += len(request_frames)
            self.waiting_frames += first
            self.changed.notify_all()
        # An idle GPU and a free slot: start the batch here, without waiting for the launcher thread to wake.
        if self.in_flight.acquire(blocking=False):
            if self.model_done is None or self.model_done.query():
                self._launch_waiting()
            else:
                self.in_flight.release()
        with self.changed:
            self.changed.wait_for(lambda: self.waiting_frames < WAITING_BATCHES * self.max_batch or self.closing)
        return None

    def _launch_batches(self):
        """Batch after batch: every waiting frame (up to max_batch_size) once the GPU and an in-flight slot are free."""
        if self.gpu is not None:  # the current GPU is per thread
            torch.cuda.set_device(self.gpu)
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.waiting or self.closing)
                if self.closing:
                    return
            self.in_flight.acquire()
            if self.model_done is not None:
                # Frames that arrive while the GPU runs the last batch's model join this batch instead of queueing
                # behind it on the GPU as a batch of their own.
                self.model_done.synchronize()
            self._launch_waiting()

    def _launch_waiting(self) -> None:
        """Start a batch of the waiting frames (up to max_batch_size) in the in-flight slot the caller holds."""
        with self.launching:  # by execute or the launcher thread, one at a time: the GPU runs batches as taken
            with self.changed:
                taken, frames = [], 0
                while self.waiting and frames + len(self.waiting[0].frames) <= self.max_batch:
                    taken.append(self.waiting.popleft())
                    frames += len(taken[-1].frames)
                self.waiting_frames -= frames
                self.changed.notify_all()
            if taken:
                self._launch(taken)
            else:  # the other caller took them first
                self.in_flight.release()

    def _launch(self, taken: list[_Waiting]) -> None:
        senders = [waiting.sender for waiting in taken]
        launched = time.perf_counter()
        for waiting in taken:
            self.counters.add("waiting", launched - waiting.staged_at)
        try:
            with torch.inference_mode(), torch.cuda.stream(self.model_stream):
                for copied in {id(w.copied): w.copied for w in taken if w.copied is not None}.values():
                    self.model_stream.wait_event(copied)
                batch = torch.cat([waiting.frames for waiting in taken])
                model = None  # the model's time: on the GPU, between two timing events read by the finisher
                if self.model_stream is not None:
                    for waiting in taken:  # read on this stream: not reused before that is done
                        waiting.frames.record_stream(self.model_stream)
                    model = torch.cuda.Event(enable_timing=True)
                    model.record(self.model_stream)
                predictions = self.runner.infer(batch)
                done = None
                if self.model_stream is None:
                    model = time.perf_counter() - launched
                else:
                    done = self.model_done = torch.cuda.Event(enable_timing=True)
                    done.record(self.model_stream)
                    predictions.record_stream(self.finish_stream)
        except Exception as exc:  # noqa: BLE001  the thread must go on launching the next batches
            self.in_flight.release()
            _fail(senders, exc)
            return
        self.counters.count(len(batch))
        # What answering needs, not the frames: their memory goes back as soon as the model has read them.
        answers = [(waiting.sender, len(waiting.frames), waiting.called_at) for waiting in taken]
        self.started.put((answers, predictions, done, launched, model))

    def _finish_batches(self):
        """NMS and responses, batch after batch, in the order the batches started."""
        if self.gpu is not None:
            torch.cuda.set_device(self.gpu)
        while (started := self.started.get()) is not None:
            answers, predictions, done, launched, model = started
            senders = [sender for sender, _, _ in answers]
            try:
                with torch.inference_mode(), torch.cuda.stream(self.finish_stream):
                    if done is not None:
                        self.finish_stream.wait_event(done)
                    rows = select_detections(predictions, self.conf_threshold, self.nms_threshold).rows
                read_at = time.perf_counter()
                first = 0
                for sender, size, called_at in answers:
                    sender.send(_response(rows[first : first + size], time.perf_counter() - called_at), flags=FINAL)
                    first += size
                model_seconds = model if done is None else model.elapsed_time(done) / 1000.0  # done: rows read
                self.counters.add("model", model_seconds)
                self.counters.add("nms", read_at - launched - model_seconds)
                self.counters.add("responding", time.perf_counter() - read_at)
            except Exception as exc:  # noqa: BLE001  the thread must go on serving the next batches
                _fail(senders, exc)
            finally:
                self.in_flight.release()

    def finalize(self):
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.threads[0].join()
        self.started.put(None)
        self.threads[1].join()
        _fail([waiting.sender for waiting in self.waiting], RuntimeError("the model is being unloaded"))
        self.counters.close()
        self.runner.close()


def _fail(senders, exc: Exception) -> None:
    error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
    for sender in senders:
        try:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
        except Exception as send_error:  # noqa: BLE001  e.g. this request was already answered
            pb_utils.Logger.log_error(f"bytetrack_pytorch: could not report {exc!r}: {send_error}")


def _response(rows, server_seconds: float):
    """One request's frames as zero-padded (frames, N, 7) rows and their counts (at least one row: no empty tensor),
    and the seconds the request has spent here."""
    counts = np.array([[len(r)] for r in rows], dtype=np.int32)
    padded = np.zeros((len(rows), max(1, int(counts.max())), len(DETECTION_COLUMNS)), dtype=np.float32)
    for frame, frame_rows in enumerate(rows):
        padded[frame, : len(frame_rows)] = frame_rows
    seconds = np.full((len(rows), 1), server_seconds, dtype=np.float32)
    tensors = {PYTHON_OUTPUT: padded, PYTHON_COUNT_OUTPUT: counts, PYTHON_SERVER_OUTPUT: seconds}
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(t))) for name, t in tensors.items()
        ]
    )
