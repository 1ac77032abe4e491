"""bytetrack_pytorch: a Triton python-backend model that runs reidctl's PyTorch runner and its NMS.

Input  "frames":         uint8 (B, H, W, 3) letterboxed BGR frames (the runner normalises them on its device).
Output "detections":     float32 (B, N, 7) rows x1, y1, x2, y2 (input-canvas pixels), obj_conf, class_conf,
                         class_id, after the configured conf_threshold and NMS; zero rows pad a frame's list.
Output "num_detections": int32 (B, 1), the real rows of each frame.

The whole detector but the letterbox runs here, so a response is a few rows instead of every anchor and a client
does no GPU work (a second process on the GPU would time-slice it with this one). Triton's dynamic batcher hands
over several requests at once; they run as one batch: one CUDA graph per batch size on the GPU (fp16 there,
optionally torch.compile'd), fp32 on the CPU. `execute` only starts a batch: a finisher thread runs its NMS and
answers each request through its response sender, so the next batch's model runs while this one's host work
(NMS, responses, Triton's own copies) goes on. At most BATCHES_IN_FLIGHT batches are between their start and
their last response: a further `execute` waits, and the requests that arrive meanwhile wait in Triton's queue and
join the next batch. Without the bound a slow finisher (the worst load's 8,400 rows a frame) let batches of one
frame start as fast as they came, and each small batch made the finisher slower still.
`reidctl setup-triton` copies this file into the repository and writes config.pbtxt, whose parameters name the
checkpoint, model type, test size, device, precision and thresholds.
"""

import json
import os
import queue
import site
import sys
import threading


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
from reidctl.engine.postprocess import DETECTION_COLUMNS, select_detections  # noqa: E402
from reidctl.triton.repository import (  # noqa: E402
    PYTHON_COUNT_OUTPUT,
    PYTHON_INPUT,
    PYTHON_OUTPUT,
    config_from_parameters,
    instance_device,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
BATCHES_IN_FLIGHT = 2  # one batch's model runs while the one before it is finished (NMS, responses)


class _Staging:
    """Pinned host buffers, one per batch in flight, each reused once its copy to the GPU is done."""

    def __init__(self, count: int, shape: tuple[int, ...], device: torch.device):
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        self.copied: list[torch.cuda.Event | None] = [None] * count
        self.device = device
        self.turn = 0

    def to_device(self, frames: list[torch.Tensor]) -> torch.Tensor:
        index, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.copied[index] is not None:
            self.copied[index].synchronize()
        staged = torch.cat(frames, out=self.buffers[index][: sum(len(f) for f in frames)])
        batch = staged.to(self.device, non_blocking=True)
        self.copied[index] = torch.cuda.Event()
        self.copied[index].record()
        return batch


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
        max_batch = model_config["max_batch_size"]
        device = self.runner.device
        self.staging = self.model_stream = self.finish_stream = None
        self.in_flight = threading.BoundedSemaphore(BATCHES_IN_FLIGHT)  # released by the finisher
        if device.type == "cuda":
            # Host work here is the batch's staging copy: 4 threads copy 8 frames in 1.0 ms instead of 1.8 ms with
            # one (H100 host), while a full pool of spinning OpenMP threads would take cores from the clients.
            torch.set_num_threads(4)
            self.staging = _Staging(2, (max_batch, height, width, 3), device)
            # Two streams: one batch's NMS overlaps the next batch's model.
            self.model_stream, self.finish_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)
        if self.runner.use_cuda_graph:
            # Capture every batch size's graph now: the dynamic batcher forms any size up to the maximum, and a
            # capture inside a request would stall the whole batch.
            for size in range(1, max_batch + 1):
                self.runner.infer(torch.zeros((size, height, width, 3), dtype=torch.uint8, device=device))
        self.started: queue.Queue = queue.Queue()
        self.finisher = threading.Thread(target=self._finish_batches, name="reidctl-finisher", daemon=True)
        self.finisher.start()

    def execute(self, requests):
        """Start the batch and return; the finisher answers every request once its detections are ready."""
        senders = [request.get_response_sender() for request in requests]
        self.in_flight.acquire()
        try:
            # DLPack in and out: with numpy >= 2 the stub returns empty tensors built from ndarrays.
            frames = [
                torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, PYTHON_INPUT).to_dlpack()) for r in requests
            ]
            with torch.inference_mode(), torch.cuda.stream(self.model_stream):
                # Copied before returning: Triton frees the request tensors when execute returns.
                batch = self.staging.to_device(frames) if self.staging else torch.cat(frames)
                predictions = self.runner.infer(batch)
                done = None
                if self.model_stream is not None:
                    done = self.model_stream.record_event()
                    predictions.record_stream(self.finish_stream)  # used there: not reused before that work is done
        except Exception as exc:  # every request of the batch gets the failure instead of the server seeing a crash
            self.in_flight.release()
            _fail(senders, exc)
            return None
        self.started.put((senders, [len(f) for f in frames], predictions, done))
        return None

    def _finish_batches(self):
        """NMS and responses, batch after batch, in the order the batches started."""
        if self.gpu is not None:  # the current GPU is per thread
            torch.cuda.set_device(self.gpu)
        while (started := self.started.get()) is not None:
            senders, sizes, predictions, done = started
            try:
                with torch.inference_mode(), torch.cuda.stream(self.finish_stream):
                    if done is not None:
                        self.finish_stream.wait_event(done)
                    rows = select_detections(predictions, self.conf_threshold, self.nms_threshold).rows
                first = 0
                for sender, size in zip(senders, sizes):
                    sender.send(_response(rows[first : first + size]), flags=FINAL)
                    first += size
            except Exception as exc:  # noqa: BLE001  the thread must go on serving the next batches
                _fail(senders, exc)
            finally:
                self.in_flight.release()

    def finalize(self):
        self.started.put(None)
        self.finisher.join()
        self.runner.close()


def _fail(senders, exc: Exception) -> None:
    error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
    for sender in senders:
        try:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
        except Exception as send_error:  # noqa: BLE001  e.g. this request was already answered
            pb_utils.Logger.log_error(f"bytetrack_pytorch: could not report {exc!r}: {send_error}")


def _response(rows):
    """One request's frames as zero-padded (frames, N, 7) rows and their counts (at least one row: no empty tensor)."""
    counts = np.array([[len(r)] for r in rows], dtype=np.int32)
    padded = np.zeros((len(rows), max(1, int(counts.max())), len(DETECTION_COLUMNS)), dtype=np.float32)
    for frame, frame_rows in enumerate(rows):
        padded[frame, : len(frame_rows)] = frame_rows
    tensors = {PYTHON_OUTPUT: padded, PYTHON_COUNT_OUTPUT: counts}
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(t))) for name, t in tensors.items()
        ]
    )
