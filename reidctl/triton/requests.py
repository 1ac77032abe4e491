"""Requests to Triton Inference Server over gRPC, on NumPy arrays: the Triton backend's runner
(reidctl/backends/triton.py) and the client processes of a bench (reidctl/apps/clients.py), which send frames
and so import no torch.

Several streams reach the server's dynamic batcher at once when they call one TritonRequests from several threads
(each call is its own request; the gRPC client is thread safe). Frames travel as uint8 canvases to a model that
normalises on the server (the python model), or as normalised tensors to one that takes float input (a TensorRT
engine). On the server's host, inputs can go through system shared memory, or through CUDA shared memory: a region
in the server's GPU memory that this process uploads each batch into (detection.triton.shared_memory).

With several servers (detection.triton.url a list), each calling thread is a camera: its first request gives it to
the live server with the fewest cameras, where it stays. A request that fails because its server is gone moves the
thread to a live server and is sent again there, counted and said (ServerPool in reidctl/triton/client.py keeps the
books).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import mmap
import os
import re
import threading
import time
import weakref
from collections import Counter
from concurrent.futures import Future

import numpy as np

from reidctl.core.artifact_checks import checked
from reidctl.core.frames import letterbox_frame, rescale
from reidctl.errors import BackendUnavailable, ReidctlError, first_line, print_warning
from reidctl.triton.client import (
    LOCAL_HOSTS,
    ServerPool,
    batch_counts,
    grpc_key_headers,
    message_of,
    metric_batch_counts,
    metrics_page,
    model_metric,
    served_model,
)
from reidctl.triton.repository import (
    HOST_INPUTS_PARAMETER,
    PYTHON_COUNT_OUTPUT,
    PYTHON_OUTPUT,
    PYTHON_SERVER_OUTPUT,
    SERVER_STAGES,
    STAGE_METRIC,
)
from reidctl.triton.watchdog import SHM_DIR

# A request may take this many times the latency a caller expects (allow_latency) before it counts as hung: wide,
# because a closed loop on a busy CPU (client threads and server sharing cores) queues far longer than N x one
# request (docs/PERFORMANCE.md).
LATENCY_MARGIN = 10.0
# The first request may carry the server's one-off costs (first run at this input size, CUDA graph capture).
FIRST_REQUEST_TIMEOUT = 300.0
# How long a server that failed a request may take to say it is live before it counts as down; and how long a
# region's unregistering may take (the server may be hung).
HEALTH_TIMEOUT = 2.0
# Triton's own counters (microseconds, every request) of a request's time before the python model's stages: in the
# queue (until the model's execute is free to take it) and the copy of its inputs for the model's process.
TRITON_STAGES = {"queue": "nv_inference_queue_duration_us", "input": "nv_inference_compute_input_duration_us"}
_region_ids = itertools.count()
_camera_ids = itertools.count()
# A region's name says which process made it: reidctl_[cuda_]PID_NAMESPACE_N, NAMESPACE the PID namespace (its
# inode) that PID is counted in. A killed process cannot unregister its regions, so the next client on this host
# finds them by a PID gone from its own namespace and removes them (a region of a live process, or of another
# namespace, is never touched).
_REGION_NAME = re.compile(r"reidctl_(?:cuda_)?(\d+)_(\d+)_\d+")


def _unregister_region(unregister, name: str, headers: dict[str, str]) -> None:
    """Unregister region ``name`` with ``unregister`` (the client's call for its kind). The server refuses while a
    request it still runs reads the region (one this client gave up on, e.g. timed out): wait for it, at most
    HEALTH_TIMEOUT. Left registered where the server is gone or hung: the next client removes it once this process
    has ended."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while True:
        try:
            unregister(name, headers=headers, client_timeout=HEALTH_TIMEOUT)
            return
        except Exception as exc:  # noqa: BLE001  the local memory goes regardless
            if "currently in use" not in message_of(exc) or time.monotonic() > deadline:
                return
        time.sleep(0.01)


def _pid_namespace() -> int:
    """This process's PID namespace (0: not known here, so no region is judged by its PID)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


_PID_NAMESPACE = _pid_namespace()


def _region_name(kind: str = "") -> str:
    return f"reidctl_{kind}{os.getpid()}_{_PID_NAMESPACE}_{next(_region_ids)}"


def left_by_an_ended_process(name: str) -> bool:
    """The region ``name`` was made by a process of this PID namespace that no longer exists."""
    made_by = _REGION_NAME.fullmatch(name)
    if made_by is None or not _PID_NAMESPACE or int(made_by[2]) != _PID_NAMESPACE:
        return False
    try:
        os.kill(int(made_by[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process
        return False
    return False


def availability() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
    except Exception as exc:  # protobuf version clashes raise more than ImportError
        return f"tritonclient[grpc] cannot be imported ({type(exc).__name__}: {first_line(exc, 120)})"
    return None


def _input_gpu(parameters: dict[str, str]) -> int:
    """The GPU a CUDA shared memory region goes on: the python model's device ("cuda:N"; "cuda" or "auto" is GPU 0,
    where Triton places a single GPU's instance). Its model copies a batch from there to its own GPU if they differ."""
    device = parameters.get("device", "")
    index = device.removeprefix("cuda:")
    return int(index) if device.startswith("cuda:") and index.isdigit() else 0


def _gone_status(exc: Exception) -> bool:
    """The client's error is one a server that is gone gives (unreachable, or no answer in time)."""
    status = str(exc.status()) if callable(getattr(exc, "status", None)) else ""
    return "UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status


class _SharedInput:
    """One thread's system shared memory region for input batches, grown on demand. A batch may be written into it
    in place (``view``), which its request then sends without a copy.

    The region is a mapping of its own, never closed here: each view holds it, so a view that outlives the region
    (a request that moves to another server copies its batch from the old one) still reads mapped memory; the
    mapping goes with its last holder, the region's name when it is released."""

    def __init__(self, client, headers: dict[str, str]):
        self.client, self.headers = client, headers
        self.mapping: mmap.mmap | None = None
        self.name = ""
        self.size = 0
        self.address = 0  # where the mapping starts in this process

    def ensure(self, byte_size: int) -> None:
        if byte_size <= self.size:
            return
        self.release()
        self.name = _region_name()
        path = f"{SHM_DIR}/{self.name}"
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # this user's only
        try:
            os.ftruncate(descriptor, byte_size)
            self.mapping = mmap.mmap(descriptor, byte_size)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(descriptor)
        self.size = byte_size
        self.address = self.view((1,), np.uint8).ctypes.data
        self.client.register_system_shared_memory(self.name, f"/{self.name}", byte_size, headers=self.headers)

    def view(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.mapping)

    def holds(self, array: np.ndarray) -> bool:
        """``array`` is a view of this region from its start (a batch written in place)."""
        return self.mapping is not None and array.ctypes.data == self.address and array.nbytes <= self.size

    def release(self) -> None:
        if self.mapping is None:
            return
        _unregister_region(self.client.unregister_system_shared_memory, self.name, self.headers)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{SHM_DIR}/{self.name}")
        self.mapping, self.size, self.address = None, 0, 0

    def publish(self, byte_size: int) -> None:
        """The batch written into the region is what the server reads: nothing to send."""


class RegionUnavailable(Exception):
    """A shared memory region cannot be made or filled on this host (e.g. CUDA's, without a GPU here)."""


class _CudaInput:
    """One thread's CUDA shared memory region for input batches: device memory on the server's GPU, which the
    server maps (CUDA IPC) and hands to the model without a host copy, and a pinned host buffer of the same size
    that a batch is written into (``view``, as for a system region) and copied up from in one transfer
    (``publish``). Created on the first batch, grown on demand.

    The host buffer is freed with its last view (a request that moves to another server copies its batch from the
    old region's buffer)."""

    def __init__(self, client, headers: dict[str, str], device_id: int):
        try:
            from tritonclient.utils import cuda_shared_memory
        except Exception as exc:  # tritonclient raises RuntimeError without cuda-python
            raise RegionUnavailable(f"it needs cuda-python here: {first_line(exc, 120)}") from None
        self.cuda_shared_memory = cuda_shared_memory
        self.runtime = cuda_shared_memory.cudart
        self.client, self.headers, self.device_id = client, headers, device_id
        self.region = None  # tritonclient's CudaSharedMemoryRegion
        self.host: ctypes.Array | None = None
        self.stream = None
        self.name = ""
        self.size = 0  # set once the server has the region

    def _call(self, function, *args):
        error, *results = function(*args)
        if error != self.runtime.cudaError_t.cudaSuccess:
            raise RegionUnavailable(f"{function.__name__}: {self.runtime.cudaGetErrorString(error)[1].decode()}")
        return results[0] if results else None

    def ensure(self, byte_size: int) -> None:
        if byte_size <= self.size:
            return
        self.release()
        self.name = _region_name("cuda_")
        try:
            self._call(self.runtime.cudaSetDevice, self.device_id)
            self.region = self.cuda_shared_memory.create_shared_memory_region(self.name, byte_size, self.device_id)
            address = int(self._call(self.runtime.cudaMallocHost, byte_size))
            self.host = (ctypes.c_uint8 * byte_size).from_address(address)
            weakref.finalize(self.host, self.runtime.cudaFreeHost, address)
            self.stream = self._call(self.runtime.cudaStreamCreateWithFlags, self.runtime.cudaStreamNonBlocking)
        except Exception as exc:
            self.release()
            raise RegionUnavailable(first_line(exc, 160)) from None
        try:
            self.client.register_cuda_shared_memory(
                self.name, self.cuda_shared_memory.get_raw_handle(self.region), self.device_id, byte_size,
                headers=self.headers,
            )
        except Exception:
            self.release()
            raise
        self.size = byte_size

    def view(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.host)

    def holds(self, array: np.ndarray) -> bool:
        """``array`` is a view of this region's host buffer from its start (a batch written in place)."""
        return (self.host is not None and array.ctypes.data == ctypes.addressof(self.host)
                and array.nbytes <= self.size)

    def publish(self, byte_size: int) -> None:
        """The batch written into the host buffer, up to the server's GPU (returns once it is there)."""
        self._call(self.runtime.cudaMemcpyAsync, self.region._base_addr, ctypes.addressof(self.host), byte_size,
                   self.runtime.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        self._call(self.runtime.cudaStreamSynchronize, self.stream)

    def release(self) -> None:
        if self.size:
            _unregister_region(self.client.unregister_cuda_shared_memory, self.name, self.headers)
        if self.stream is not None:
            self.runtime.cudaStreamDestroy(self.stream)
        if self.region is not None:
            with contextlib.suppress(Exception):
                self.cuda_shared_memory.destroy_shared_memory_region(self.region)
        self.region, self.host, self.stream, self.size = None, None, None, 0


class _Server:
    """One endpoint: its gRPC client and the shared memory regions of the threads that send to it.

    ``input_memory`` is how inputs reach it: "cuda" or "system" shared memory (a server on this host), or "none"
    (the request's bytes). A kind that fails steps down: cuda to system, system to none (said once; cuda's only
    where it was asked for by name)."""

    def __init__(self, index: int, url: str, client, input_memory: str, headers: dict[str, str]):
        self.index, self.url, self.client, self.headers = index, url, client, headers  # headers: its key
        self.input_memory = input_memory if url.rsplit(":", 1)[0] in LOCAL_HOSTS else "none"
        self.regions: list[_SharedInput | _CudaInput] = []
        self.answered = False  # until a first request succeeds, requests get FIRST_REQUEST_TIMEOUT


def _remove_ended_processes_regions(server: _Server, warn) -> None:
    """Unregister the shared memory regions that ended (killed) reidctl processes of this host left on ``server``,
    which otherwise hold their memory (the host's, or the server's GPU's) until the server stops, and remove their
    files in /dev/shm (left there even after the server stops); said once."""
    client, headers = server.client, server.headers
    removed = 0
    for status, unregister in (
        (client.get_system_shared_memory_status, client.unregister_system_shared_memory),
        (client.get_cuda_shared_memory_status, client.unregister_cuda_shared_memory),
    ):
        try:
            regions = status(headers=headers, as_json=True, client_timeout=HEALTH_TIMEOUT).get("regions", {})
            for name in filter(left_by_an_ended_process, regions):
                unregister(name, headers=headers, client_timeout=HEALTH_TIMEOUT)
                removed += 1
        except Exception:  # noqa: BLE001  a server that cannot say or do it keeps them; the run goes on
            continue
    files = []
    with contextlib.suppress(OSError), os.scandir(SHM_DIR) as entries:
        files = [entry.name for entry in entries if left_by_an_ended_process(entry.name)]
    for name in files:
        with contextlib.suppress(OSError):  # another user's, or removed meanwhile
            os.unlink(f"{SHM_DIR}/{name}")
    if removed:
        warn(f"warning: removed {removed} shared memory region(s) that ended reidctl processes left on Triton at "
             f"{server.url}")


class _Seat:
    """A calling thread's place: its server and its shared memory region on each server it has sent to."""

    def __init__(self, server: _Server, camera: int | None = None):
        self.server, self.camera = server, camera
        self.regions: dict[int, _SharedInput | _CudaInput] = {}


class _EndMark:
    """Held by one thread's local storage only, so it goes when the thread ends."""


class TritonRequests:
    """One client of one or several servers that serve the same model; thread safe. ``infer_array`` takes a batch
    in the model's input form and returns each frame's detection rows (a model that runs NMS) or the predictions."""

    name = "triton"

    def __init__(self, triton, warn=print_warning):
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self._grpc, self._server_error = grpcclient, InferenceServerException
        urls = triton.urls
        self.url = ", ".join(urls)
        self.model_name = triton.model_name
        self.model_version = triton.model_version
        self.configured_timeout = self.timeout = triton.timeout
        self.metrics_port = triton.metrics_port
        self.max_in_flight = triton.max_in_flight
        self._warn, self._verbose = warn, triton.verbose
        self.servers = [
            _Server(i, url, grpcclient.InferenceServerClient(url, verbose=triton.verbose), triton.input_memory,
                    grpc_key_headers(url, triton.key_file))
            for i, url in enumerate(urls)
        ]
        # One server: every thread sends to it, nothing to assign. Several: a pool assigns threads to servers.
        self._pool = ServerPool(urls) if len(urls) > 1 else None
        try:
            self.model = model = self._check_servers()
        except ReidctlError:
            for server in self.servers:
                server.client.close()
            raise
        self.input_name, self.input_datatype = model.input_name, model.input_datatype
        self.input_format = "canvas" if self.input_datatype == "UINT8" else "tensor"
        self.decoded = True
        self.input_shape, self.max_batch_size = model.input_shape, model.max_batch_size
        self.returns_detections, self.output_names = model.returns_detections, model.output_names
        self.output_datatype, self.parameters = model.output_datatype, model.parameters
        self.server_version = model.server_version
        self.input_gpu = _input_gpu(self.parameters)
        self._cuda_asked = triton.input_memory == "cuda"
        self._choose_input_memory(triton.input_memory, warn)
        for server in self.servers:
            if server.input_memory != "none" and (self._pool is None or self._pool.shares[server.index].live):
                _remove_ended_processes_regions(server, warn)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False

    # -- set-up ---------------------------------------------------------------------------------------------
    def _served_model(self, server: _Server, client=None):
        return served_model(client or server.client, server.url, self.model_name, self.model_version, self.timeout,
                            self._server_error, server.headers)

    def _check_servers(self):
        """The model every live server serves, the same on each. With several servers, one that is not reachable
        is marked down (and checked again later) while another is; a server with the model missing or different
        is an error."""
        if self._pool is None:
            return self._served_model(self.servers[0])
        models, unreachable = {}, []
        for server in self.servers:
            try:
                models[server.index] = self._served_model(server)
            except BackendUnavailable as exc:
                unreachable.append(exc)
                self._pool.mark_down(server.index)
                self._warn(f"warning: {exc}; its cameras go to the other servers until it answers")
        if not models:
            raise BackendUnavailable(
                f"no Triton server of detection.triton.url is reachable ({len(unreachable)} tried): {unreachable[0]}"
            )
        (first, model), *others = models.items()
        for index, other_model in others:
            self._check_same_model(model, self.servers[first], other_model, self.servers[index])
        return model

    def _check_same_model(self, model, server: _Server, other_model, other: _Server) -> None:
        if dataclasses.replace(other_model, server_version="") != dataclasses.replace(model, server_version=""):
            raise ReidctlError(
                f"Triton servers at {server.url} and {other.url} serve different '{self.model_name}' models "
                "(inputs, outputs, batching or parameters): give every server the same model repository"
            )

    def _choose_input_memory(self, asked: str, warn) -> None:
        """The servers on this host take what detection.triton.shared_memory asks. "auto" is CUDA shared memory
        where the python model runs on a GPU (docs/PERFORMANCE.md, machines N, O and P), else system shared memory;
        "cuda" that the model would not take as it is goes to system shared memory, said."""
        chosen = asked
        if asked == "auto":
            chosen = "cuda" if self.returns_detections and self._cuda_refusal() is None else "system"
        elif asked == "cuda" and (refusal := self._cuda_refusal()):
            warn(f"warning: Triton CUDA shared memory unused: {refusal}; sending inputs through system shared memory")
            chosen = "system"
        for server in self.servers:
            if server.input_memory != "none":  # a server on this host
                server.input_memory = chosen

    def _cuda_refusal(self) -> str | None:
        """Why the served python model would not take inputs in the GPU's memory as they are (None: it would; a
        TensorRT engine reads them where they are)."""
        if not self.returns_detections:
            return None
        where = f"model '{self.model_name}' on Triton at {self.url}"
        if self.parameters.get("device") == "cpu":
            return f"{where} runs on the CPU"
        if self.parameters.get(HOST_INPUTS_PARAMETER) != "no":
            return (f"{where} copies its inputs to the host (a config.pbtxt from before GPU inputs): rewrite it with "
                    "`reidctl setup-triton` and restart the server")
        return None

    @property
    def requests_in_flight(self) -> int:
        """Requests a caller that batches for the servers (detect's batch loops, one request each) keeps going:
        max_in_flight for each server of detection.triton.url, which the pool spreads evenly over them."""
        return self.max_in_flight * len(self.servers)

    @property
    def artifact_name(self) -> str:
        return f"model '{self.model_name}'"

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model's fixed (height, width); None where either is dynamic."""
        dims = self.input_shape[1:] if self.max_batch_size > 0 else self.input_shape
        height_width = dims[:2] if self.input_format == "canvas" else dims[1:3]
        return tuple(height_width) if all(d > 0 for d in height_width) else None

    def check_config(self, detection) -> None:
        """What the served model must agree with besides its input size (checked with it: core/artifact_checks.py)."""
        self.check_thresholds(detection.conf_threshold, detection.nms_threshold)
        self.check_model_type(detection.model_type)

    def check_thresholds(self, conf_threshold: float, nms_threshold: float) -> None:
        """A model that applies NMS on the server must use the client's IoU threshold and a score threshold no
        stricter than the client's (the client drops rows below its own)."""
        if not self.returns_detections:
            return
        server_conf = float(self.parameters.get("conf_threshold", 0.0))
        server_nms = float(self.parameters.get("nms_threshold", nms_threshold))
        where = f"model '{self.model_name}' on Triton at {self.url}"
        if abs(server_nms - nms_threshold) > 1e-9:
            raise ReidctlError(
                f"{where} applies NMS at IoU {server_nms:g} but detection.nms_threshold is {nms_threshold:g}: "
                f"rewrite it with `reidctl setup-triton --nms {nms_threshold:g}` and restart the server"
            )
        if conf_threshold < server_conf - 1e-9:
            raise ReidctlError(
                f"{where} keeps scores >= {server_conf:g} but detection.conf_threshold is {conf_threshold:g}: "
                f"rewrite it with `reidctl setup-triton --conf {conf_threshold:g}` and restart the server"
            )

    def check_model_type(self, model_type: str) -> None:
        """The python model carries its config in its parameters: its YOLOX size must be the one the client names
        (either may say 'auto', from the checkpoint: nothing to compare then)."""
        served = self.parameters.get("model_type")
        if served in (None, "auto") or model_type == "auto" or served == model_type:
            return
        raise ReidctlError(
            f"model '{self.model_name}' on Triton at {self.url} runs YOLOX model_type '{served}' but "
            f"detection.model_type is '{model_type}': rewrite it with `reidctl setup-triton --model-type {model_type}` "
            "and restart the server, or name the server's model type"
        )

    def describe(self) -> dict:
        server_model = {key: self.parameters[key] for key in ("fp16", "compile", "device") if key in self.parameters}
        servers = {} if self._pool is None else {"servers": self._pool.report()}
        return {
            "backend": self.name,
            "device": "cpu",  # the client's work (letterbox, rescale) runs on the host
            "url": self.url,
            "model": self.model_name,
            "server": f"Triton {self.server_version}",
            "input": f"{self.input_name} {self.input_datatype}",
            "output": "detections (NMS on the server)"
            if self.returns_detections
            else f"predictions {self.output_datatype}",
            "server_model": server_model,
            "shared_memory": ", ".join(sorted({server.input_memory for server in self.servers})),
            "requests_in_flight": self.requests_in_flight,
            **servers,
        }

    # -- servers --------------------------------------------------------------------------------------------
    def _seat(self) -> _Seat:
        """This thread's place, given on its first request."""
        seat = getattr(self._local, "seat", None)
        if seat is None:
            seat = self._local.seat = self._join()
        return seat

    def _join(self) -> _Seat:
        if self._pool is None:
            return _Seat(self.servers[0])
        self._recheck_down_servers()
        camera = next(_camera_ids)
        index = self._pool.join(camera)
        if index is None:
            raise ReidctlError(
                f"no Triton server of detection.triton.url is live ({self.url}): "
                "check them with `reidctl setup-triton --status`"
            )
        # When the thread ends its thread-local values go, and its server has a camera fewer. The mark is an object
        # of its own: the seat may outlive the thread a while (an error's traceback holds it until collected).
        self._local.end_mark = end_mark = _EndMark()
        self._local.leave = weakref.finalize(end_mark, self._pool.leave, camera)  # runs once: here or leave_thread
        return _Seat(self.servers[index], camera)

    def last_server_seconds(self) -> float | None:
        """The seconds the server's model spent on the calling thread's last batch, from its execute to its response
        (the longest of the batch's requests); None where the model does not say."""
        return getattr(self._local, "server_seconds", None)

    def leave_thread(self) -> None:
        """The calling thread sends no more: its shared memory regions go now, and its seat (a camera fewer on its
        server), instead of when the runner closes (a run's main thread after its warm-up: detect's batch loops
        send from threads of their own)."""
        seat = getattr(self._local, "seat", None)
        if seat is None:
            return
        for index in list(seat.regions):
            self._drop_region(seat, index)
        if (leave := getattr(self._local, "leave", None)) is not None:
            leave()
        self._local.__dict__.clear()

    def _recheck_down_servers(self) -> None:
        """Down servers whose back-off has passed take cameras again if they serve the model (the same one).

        Through a new client with a connection of its own: gRPC shares one connection per address between clients,
        and the old one may still be waiting out gRPC's reconnect back-off."""
        due = self._pool.due_for_check()
        if not due:
            return
        keepalive = self._grpc.KeepAliveOptions()
        options = [  # tritonclient's own defaults, and a connection not shared
            ("grpc.max_send_message_length", self._grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", self._grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        for index in due:
            server = self.servers[index]
            client = self._grpc.InferenceServerClient(server.url, verbose=self._verbose, channel_args=options)
            try:
                self._check_same_model(self.model, self.servers[0], self._served_model(server, client), server)
            except ReidctlError:
                client.close()
                continue
            server.client, server.answered = client, False
            self._pool.mark_live(index)

    def _is_down(self, server: _Server, exc: Exception) -> bool:
        """A request failed: is it because its server is gone (unreachable, or timed out and not live)?"""
        if not _gone_status(exc):
            return False
        try:
            return not server.client.is_server_live(client_timeout=HEALTH_TIMEOUT)
        except self._server_error:
            return True

    def _move(self, seat: _Seat) -> bool:
        """Move this thread off its server, which is down, to a live one (False: none is live)."""
        if self._pool.mark_down(seat.server.index):
            self._warn(f"warning: Triton server {seat.server.url} stopped answering: its cameras move to the other "
                       "servers of detection.triton.url until it answers again")
        self._drop_region(seat)  # the server is gone; a region on it is no use, even if it comes back
        self._recheck_down_servers()
        index = self._pool.move(seat.camera)
        if index is None:
            return False
        seat.server = self.servers[index]
        return True

    # -- inference ------------------------------------------------------------------------------------------
    def _region(self, seat: _Seat) -> _SharedInput | _CudaInput:
        """This thread's region on its server, of the kind the server takes now."""
        server = seat.server
        region = seat.regions.get(server.index)
        kind = _CudaInput if server.input_memory == "cuda" else _SharedInput
        if not isinstance(region, kind):
            self._drop_region(seat)
            if kind is _CudaInput:
                region = _CudaInput(server.client, server.headers, self.input_gpu)
            else:
                region = _SharedInput(server.client, server.headers)
            seat.regions[server.index] = region
            with self._lock:
                server.regions.append(region)
        return region

    def _drop_region(self, seat: _Seat, index: int | None = None) -> None:
        """Free the thread's region on server ``index`` (None: its own server's)."""
        server = seat.server if index is None else self.servers[index]
        region = seat.regions.pop(server.index, None)
        if region is not None:
            with self._lock:
                server.regions.remove(region)
            region.release()

    def _step_down(self, seat: _Seat, exc: Exception, tried: str) -> None:
        """Inputs of ``tried`` shared memory failed on this thread's server: it takes the next kind down (cuda to
        system, system to the request's bytes), said once."""
        server = seat.server
        with self._lock:
            stepped = server.input_memory == tried
            if stepped:
                server.input_memory = "system" if tried == "cuda" else "none"
        self._drop_region(seat)
        if stepped and (tried == "system" or self._cuda_asked):  # "auto" found no CUDA here: nothing to say
            # e.g. no GPU here, or a server in a container without the host's IPC namespace
            then = "through system shared memory" if tried == "cuda" else "over gRPC"
            what = "CUDA shared memory" if tried == "cuda" else "shared memory"
            self._warn(f"warning: Triton {what} unavailable ({message_of(exc)}); sending inputs {then}")

    def _region_bytes(self, frames: int, frame_bytes: int) -> int:
        """A region holds the model's largest batch from the start: a larger batch would replace it (unregister,
        create, register again), and the first batches of a run grow frame by frame as the cameras start."""
        return max(frames, self.max_batch_size) * frame_bytes

    def input_array(self, frames: int) -> np.ndarray | None:
        """Where this thread may write its next batch of ``frames`` canvases, which its next request then sends
        without a copy: a view of its shared memory region. None where inputs do not travel through one."""
        if self._closed or self.input_format != "canvas" or self.input_size is None:
            return None
        seat = self._seat()
        if seat.server.input_memory == "none":
            return None
        shape = (frames, *self.input_size, 3)
        try:
            region = self._region(seat)
            region.ensure(self._region_bytes(frames, int(np.prod(shape[1:]))))
        except (self._server_error, OSError, RegionUnavailable):
            return None  # the request meets the same failure, and handles it (_inputs_for)
        return region.view(shape, np.uint8)

    def _inputs_for(self, array: np.ndarray, seat: _Seat) -> list:
        """One InferInput per request in the batch's chunks; through this thread's shared memory if enabled."""
        chunk = self.max_batch_size if self.max_batch_size > 0 else len(array)
        parts = [array[i : i + chunk] for i in range(0, len(array), chunk)]
        inputs = [self._grpc.InferInput(self.input_name, list(part.shape), self.input_datatype) for part in parts]
        while (tried := seat.server.input_memory) != "none":
            try:
                region = self._region(seat)
                if not region.holds(array):
                    region.ensure(self._region_bytes(len(array), array.nbytes // max(1, len(array))))
                    np.copyto(region.view(array.shape, array.dtype), array)
                region.publish(array.nbytes)
                offset = 0
                for item, part in zip(inputs, parts):
                    item.set_shared_memory(region.name, part.nbytes, offset)
                    offset += part.nbytes
                return inputs
            except (self._server_error, OSError, RegionUnavailable) as exc:
                if _gone_status(exc):  # the server, not its shared memory: infer decides what follows
                    raise
                self._step_down(seat, exc, tried)
        for item, part in zip(inputs, parts):
            item.set_data_from_numpy(part)
        return inputs

    def _fail(self, exc: Exception, url: str) -> ReidctlError:
        status = str(exc.status()) if hasattr(exc, "status") else ""
        if "DEADLINE_EXCEEDED" in status:
            basis = "detection.triton.timeout"
            if self.timeout > self.configured_timeout:
                basis = f"{basis} {self.configured_timeout:g} s, raised for the measured latency"
            return ReidctlError(
                f"Triton request to '{self.model_name}' at {url} timed out after {self.timeout:g} s ({basis})"
            )
        if "UNAVAILABLE" in status:
            others = "" if self._pool is None else " and no other server of detection.triton.url is live"
            return ReidctlError(
                f"Triton server at {url} stopped responding ({message_of(exc)}){others}: "
                "check it with `reidctl setup-triton --status`"
            )
        return ReidctlError(f"Triton inference on '{self.model_name}' failed: {message_of(exc)}")

    def infer_array(self, array: np.ndarray) -> np.ndarray | list[np.ndarray]:
        if self._closed:
            raise ReidctlError("the Triton runner is closed")
        seat = self._seat()
        if self._pool is None:
            try:
                return self._infer_on(seat, array)
            except self._server_error as exc:
                raise self._fail(exc, seat.server.url) from None
        # Several servers: a request its server could not answer because it is gone goes to a live one (at most
        # as many tries as servers), counted on the server that failed it.
        for _ in self.servers:
            server = seat.server
            try:
                results = self._infer_on(seat, array)
            except self._server_error as exc:
                self._pool.count_request(server.index, failed=True)
                if not self._is_down(server, exc) or not self._move(seat):
                    raise self._fail(exc, server.url) from None
                continue
            self._pool.count_request(server.index)
            return results
        raise ReidctlError(f"Triton request to '{self.model_name}' failed on every server of detection.triton.url")

    def _infer_on(self, seat: _Seat, array: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """The batch's requests to this thread's server (raises the client's error)."""
        server = seat.server
        outputs = [self._grpc.InferRequestedOutput(name) for name in self.output_names]
        timeout = self.timeout if server.answered else max(self.timeout, FIRST_REQUEST_TIMEOUT)
        results = self._send(server, self._inputs_for(array, seat), outputs, timeout)
        server.answered = True
        if PYTHON_SERVER_OUTPUT in self.output_names:  # its chunks ran side by side: the longest is the wait
            self._local.server_seconds = max(float(result.as_numpy(PYTHON_SERVER_OUTPUT)[0, 0]) for result in results)
        if self.returns_detections:  # zero-padded rows per frame and each frame's count
            return [
                rows[:count]
                for result in results
                for rows, (count,) in zip(result.as_numpy(PYTHON_OUTPUT), result.as_numpy(PYTHON_COUNT_OUTPUT))
            ]
        return np.concatenate([result.as_numpy(self.output_names[0]) for result in results])

    def _send(self, server: _Server, inputs: list, outputs: list, timeout: float) -> list:
        """One request per input chunk, their results in order (raises the client's error)."""
        futures: list[Future] = []
        # Chunks of a large batch go out together, at most max_in_flight at a time, so the batcher sees them at once.
        window = threading.BoundedSemaphore(self.max_in_flight)
        for item in inputs:
            window.acquire()
            future: Future = Future()

            def done(result, error, future=future):
                window.release()
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            try:
                server.client.async_infer(
                    self.model_name, [item], done, self.model_version, outputs=outputs, client_timeout=timeout
                )
            except self._server_error as exc:
                window.release()
                future.set_exception(exc)
            futures.append(future)
        return [future.result() for future in futures]

    def batch_counts(self) -> dict[int, int] | None:
        """Batches run per size, on the servers that answer: the python model's own counter (it forms its batches
        from the requests Triton hands over), else Triton's statistics (what its dynamic batcher formed)."""
        if self.returns_detections:
            return self.server_counters()[0]
        counts: Counter[int] = Counter()
        for server in self.servers:
            try:
                statistics = server.client.get_inference_statistics(
                    self.model_name, self.model_version, as_json=True, client_timeout=self.timeout
                )
            except self._server_error as exc:
                if self._pool is None:
                    raise self._fail(exc, server.url) from None
                continue
            counts.update(batch_counts(statistics))
        return dict(counts)

    def server_counters(self) -> tuple[dict[int, int] | None, dict[str, float] | None]:
        """The batches run per size and the seconds of each stage of a request's way, on the servers that answer,
        from one read of each server's metrics page. The stages are the python model's: Triton's own counters first
        (TRITON_STAGES: in its queue, its copy of the inputs), then the model's (STAGE_METRIC); None for a model
        without them (a TensorRT engine) or where none answers. Batches are None where the only server does not
        answer."""
        if not self.returns_detections:
            return self.batch_counts(), None
        batches: Counter[int] = Counter()
        stages: Counter[str] = Counter()
        for server in self.servers:
            if (page := metrics_page(server.url, self.metrics_port, self.timeout)) is None:
                if self._pool is None:
                    return None, None
                continue
            batches.update(metric_batch_counts(page, self.model_name))
            stages.update({stage: sum(model_metric(page, self.model_name, counter, "version").values()) / 1e6
                           for stage, counter in TRITON_STAGES.items()})
            stages.update(model_metric(page, self.model_name, STAGE_METRIC, "stage"))
        # in the order a request meets them
        return dict(batches), {stage: stages[stage] for stage in (*TRITON_STAGES, *SERVER_STAGES)
                               if stage in stages} or None

    def allow_latency(self, seconds: float) -> None:
        """Requests may take LATENCY_MARGIN x ``seconds`` where that is longer than detection.triton.timeout,
        which is meant to catch a hung server, not to fail a slow one (see bench's allow_measured_latency)."""
        self.timeout = max(self.configured_timeout, LATENCY_MARGIN * seconds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for server in self.servers:
                for region in server.regions:
                    region.release()
                server.regions.clear()
        for server in self.servers:
            server.client.close()


class FrameSender:
    """Frames to a server model that runs NMS, without torch: each frame letterboxed here, sent as one request, its
    rows rescaled to its pixels (what a Detector over the Triton runner does for such a model). What a bench's client
    processes run: they only send frames, and torch would add its memory to each (docs/PERFORMANCE.md)."""

    def __init__(self, requests: TritonRequests, input_size: tuple[int, int], conf_threshold: float):
        self.requests, self.input_size, self.conf_threshold = requests, input_size, conf_threshold

    def detect(self, frame: np.ndarray) -> np.ndarray:
        canvas, ratio = letterbox_frame(frame, self.input_size)
        return rescale(self.requests.infer_array(canvas[None]), [ratio], self.conf_threshold)[0]

    def close(self) -> None:
        self.requests.close()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_sender(config, warn=print_warning) -> FrameSender | None:
    """A FrameSender to the config's servers; None where their model returns predictions that the client turns into
    detections (its NMS needs torch: run a Detector instead)."""
    requests = checked(TritonRequests(config.detection.triton, warn), config.detection)
    if not requests.returns_detections:
        requests.close()
        return None
    return FrameSender(requests, config.detection.input_size, config.detection.conf_threshold)
