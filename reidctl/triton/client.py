"""What a Triton server says about itself, as its client sees it: health and the served model's description,
the batches it ran per size, and the most GPU memory a local server was seen to hold; and which of several servers
each camera uses.

The runner (reidctl/backends/triton.py) runs requests; these are the questions asked around them.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reidctl.errors import BackendUnavailable, ReidctlError, first_line
from reidctl.triton.repository import BATCH_METRIC, PYTHON_COUNT_OUTPUT, PYTHON_OUTPUT, PYTHON_SERVER_OUTPUT
from reidctl.triton.access import key_headers, read_key
from reidctl.io.cores import process_tree
from reidctl.triton.server import START_COMMAND, ServerState, all_running_servers, reason_line

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
SUPPORTED_INPUTS = ("UINT8", "FP16", "FP32")
# How often a runner asks nvidia-smi what a bundled server started here holds: it tells only the present, not the peak.
MEMORY_SAMPLE_INTERVAL_S = 1.0
# A server marked down is checked again after this long, then twice as long each time it is still down, up to the max.
RECHECK_FIRST_S = 1.0
RECHECK_MAX_S = 30.0


def message_of(exc: Exception) -> str:
    """tritonclient's own text of an error (its str() adds the status), in one line."""
    message = exc.message() if callable(getattr(exc, "message", None)) else None
    return first_line(message or exc)


@dataclass
class ServedModel:
    """The model's I/O and batching as the server declares them."""

    input_name: str
    input_datatype: str
    input_shape: list[int]
    max_batch_size: int
    output_names: list[str]  # the outputs the runner requests
    output_datatype: str
    returns_detections: bool  # the python model: NMS on the server, rows and counts out
    server_version: str
    parameters: dict[str, str] = field(default_factory=dict)


def served_model(client, url: str, name: str, version: str, timeout: float, server_error: type,
                 headers: dict[str, str] | None = None) -> ServedModel:
    """Check that the server is live and ``name`` is ready, and read what it takes and returns.

    A server that does not answer is BackendUnavailable (bench lists it, detect says how to start one); a model
    that is missing or failed to load is a ReidctlError with the server's reason.
    """
    try:
        live = client.is_server_live(client_timeout=timeout)
    except server_error as exc:
        live, reason = False, message_of(exc)
    else:
        reason = "the server is not live"
    if not live:
        raise BackendUnavailable(f"Triton server at {url} is not reachable ({reason}): start it with `{START_COMMAND}`")
    try:
        if not client.is_model_ready(name, version, client_timeout=timeout):
            raise ReidctlError(_not_ready_reason(client, url, name, timeout, headers))
        metadata = client.get_model_metadata(name, version, as_json=True, client_timeout=timeout)
        config = client.get_model_config(name, version, as_json=True, client_timeout=timeout)["config"]
        server_version = client.get_server_metadata(as_json=True, client_timeout=timeout).get("version", "")
    except server_error as exc:
        raise ReidctlError(f"Triton server at {url}: {message_of(exc)}") from None
    if not metadata.get("inputs") or not metadata.get("outputs"):
        raise ReidctlError(f"model '{name}' on Triton at {url} declares no input or output")
    model_input = metadata["inputs"][0]
    if model_input["datatype"] not in SUPPORTED_INPUTS:
        raise ReidctlError(f"model '{name}' takes {model_input['datatype']} input; reidctl sends UINT8, FP16 or FP32")
    output_names = [output["name"] for output in metadata["outputs"]]
    returns_detections = {PYTHON_OUTPUT, PYTHON_COUNT_OUTPUT} <= set(output_names)
    # A repository written before the model said its time has no such output.
    timed = [PYTHON_SERVER_OUTPUT] if returns_detections and PYTHON_SERVER_OUTPUT in output_names else []
    return ServedModel(
        input_name=model_input["name"],
        input_datatype=model_input["datatype"],
        input_shape=[int(d) for d in model_input["shape"]],
        max_batch_size=int(config.get("max_batch_size", 0)),
        output_names=[PYTHON_OUTPUT, PYTHON_COUNT_OUTPUT, *timed] if returns_detections else output_names[:1],
        output_datatype=metadata["outputs"][0]["datatype"],
        returns_detections=returns_detections,
        server_version=server_version,
        parameters={key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()},
    )


def _not_ready_reason(client, url: str, name: str, timeout: float, headers: dict[str, str] | None) -> str:
    where = f"Triton at {url}"
    index = client.get_model_repository_index(headers=headers, as_json=True, client_timeout=timeout).get("models", [])
    entries = [m for m in index if m.get("name") == name]
    if not entries:
        known = ", ".join(sorted({m["name"] for m in index})) or "none"
        return f"model '{name}' is not in the repository of {where} (models: {known})"
    status = entries[0]
    reason = reason_line(status["reason"]) if status.get("reason") else "not loaded"
    return f"model '{name}' on {where} is not ready ({status.get('state', 'UNAVAILABLE')}: {reason})"


def batch_counts(statistics: dict) -> dict[int, int]:
    """Executions per batch size in get_inference_statistics' JSON: what the dynamic batcher formed (the batches a
    model without batches of its own, such as a TensorRT engine, runs)."""
    counts: dict[int, int] = {}
    for model in statistics.get("model_stats", []):
        for entry in model.get("batch_stats", []):
            size = int(entry["batch_size"])
            counts[size] = counts.get(size, 0) + int(entry.get("compute_infer", {}).get("count", 0))
    return counts


def _started_here(url: str) -> ServerState | None:
    """The bundled server started on this machine that ``url`` reaches (its gRPC port, on its address), if any."""
    host, _, port = url.rpartition(":")
    return next((state for state in all_running_servers()
                 if str(state.grpc_port) == port and _reaches(host, state.listen)), None)


def local_servers(urls: list[str]) -> list[ServerState]:
    """The bundled servers started here that ``urls`` reach, each once."""
    found = {server.pid: server for url in urls if (server := _started_here(url)) is not None}
    return list(found.values())


def _reaches(host: str, listen: str) -> bool:
    """Whether a URL's ``host`` names the address a server here listens on: that address itself, or a loopback name
    where it listens on loopback or on every interface (a server bound to one other address is not on loopback)."""
    served = ipaddress.ip_address(listen)
    try:
        if ipaddress.ip_address(host.strip("[]")) == served:  # any spelling of one address, IPv6 in brackets
            return True
    except ValueError:  # a host name: only the loopback ones are known to point here
        pass
    return host in LOCAL_HOSTS and (served.is_loopback or served.is_unspecified)


def grpc_key_headers(url: str, key_file: str | None) -> dict[str, str]:
    """The key the gRPC server at ``url`` asks for on its restricted APIs: a bundled server started here has its
    own; another server's is in ``key_file`` (detection.triton.key_file)."""
    server = _started_here(url)
    key = server.key() if server is not None else read_key(Path(key_file)) if key_file else None
    return key_headers(key, "grpc")


def metrics_page(url: str, metrics_port: int, timeout: float) -> str | None:
    """The metrics page of the server at gRPC ``url``: a bundled server's own port (started here), else
    ``metrics_port`` on the URL's host. None when that endpoint does not answer (a server with its metrics off or on
    another port)."""
    host = url.rpartition(":")[0]
    if (server := _started_here(url)) is not None:
        metrics_port = server.metrics_port
    try:
        with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def model_metric(page: str, model_name: str, metric: str, label: str) -> dict[str, float]:
    """The counter ``metric`` of the model ``model_name`` on a metrics page, summed by the value of its label
    ``label`` (BATCH_METRIC by "frames", STAGE_METRIC by "stage", Triton's own counters by "version")."""
    sums: dict[str, float] = {}
    for labels, value in re.findall(rf"^{metric}{{(.*)}} (\S+)$", page, flags=re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("model") == model_name and label in found:
            sums[found[label]] = sums.get(found[label], 0.0) + float(value)
    return sums


def metric_batch_counts(page: str, model_name: str) -> dict[int, int]:
    """Batches per size that the python model ``model_name`` ran, from its BATCH_METRIC on a metrics page."""
    sums = model_metric(page, model_name, BATCH_METRIC, "frames")
    return {int(size): int(count) for size, count in sums.items() if size.isdigit()}


def local_servers_gpu_memory(urls: list[str]) -> int | None:
    """GPU memory that the bundled servers started here among ``urls`` hold now, with their python stubs, from
    nvidia-smi; None where none of them is started here, there is no nvidia-smi, or it lists none of their
    processes."""
    servers = local_servers(urls)
    if not servers or shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    pids = {pid for server in servers for pid in process_tree(server.pid)}
    used = [int(mib) * 2**20 for pid, mib in (line.split(", ") for line in lines if ", " in line) if int(pid) in pids]
    return sum(used) if used else None


class PeakWatch:
    """The most that ``measure`` was seen to return. Where a reading tells only what is held now (nvidia-smi's
    memory of a process), ``start`` reads it every ``interval`` seconds on a thread of its own until ``stop``;
    ``sample`` reads it once more and returns the most seen."""

    def __init__(self, measure: Callable[[], int | None], interval: float = MEMORY_SAMPLE_INTERVAL_S):
        self._measure, self._interval = measure, interval
        self._most: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int | None:
        """Read now; the most seen so far, this reading included (None while nothing was measured)."""
        reading = self._measure()
        with self._lock:
            if reading is not None and (self._most is None or reading > self._most):
                self._most = reading
            return self._most

    def start(self) -> None:
        """Read now and, where that measured something, every ``interval`` seconds until ``stop`` (a reading of
        None: nothing to watch here, such as a server on another host or no GPU)."""
        if self.sample() is None:
            return
        self._thread = threading.Thread(target=self._sample_until_stopped, name="reidctl-peak-watch", daemon=True)
        self._thread.start()

    def _sample_until_stopped(self) -> None:
        while not self._stopped.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class ServerShare:
    """One server's part in a ServerPool: whether it is live, its cameras and what happened to their requests."""

    url: str
    live: bool = True
    cameras: int = 0  # cameras on it now
    cameras_assigned: int = 0  # cameras ever given to it, moved-in ones included
    requests: int = 0
    failed_requests: int = 0
    cameras_moved_away: int = 0  # when it went down
    recheck_at: float = 0.0
    recheck_after: float = RECHECK_FIRST_S

    def report(self) -> dict:
        return {
            "url": self.url,
            "live": self.live,
            "cameras": self.cameras,
            "cameras_assigned": self.cameras_assigned,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "cameras_moved_away": self.cameras_moved_away,
        }


class ServerPool:
    """Which of several servers each camera sends to: a new camera goes to the live server with the fewest cameras
    (the first such in the given order) and stays there until that server goes down; then it moves to a live one.
    A server marked down is due for a check again after a back-off (``due_for_check``); once it answers it takes
    new cameras again. Cameras are keys of the caller's choosing; thread safe.
    """

    def __init__(self, urls: list[str], clock: Callable[[], float] = time.monotonic):
        self.shares = [ServerShare(url) for url in urls]
        self._clock = clock
        self._where: dict[object, int] = {}  # camera -> index of its server
        self._lock = threading.Lock()

    def _least_loaded(self) -> int | None:
        live = [i for i, share in enumerate(self.shares) if share.live]
        return min(live, key=lambda i: self.shares[i].cameras) if live else None

    def _seat(self, camera, index: int | None) -> int | None:
        if index is None:
            self._where.pop(camera, None)
            return None
        self._where[camera] = index
        self.shares[index].cameras += 1
        self.shares[index].cameras_assigned += 1
        return index

    def join(self, camera) -> int | None:
        """The server for a new camera (None: none is live)."""
        with self._lock:
            return self._seat(camera, self._least_loaded())

    def leave(self, camera) -> None:
        """The camera has ended: its server has one camera fewer."""
        with self._lock:
            index = self._where.pop(camera, None)
            if index is not None:
                self.shares[index].cameras -= 1

    def count_request(self, index: int, failed: bool = False) -> None:
        with self._lock:
            self.shares[index].requests += 1
            self.shares[index].failed_requests += failed

    def mark_down(self, index: int) -> bool:
        """True where this call found the server live: the first caller to see it gone says so."""
        with self._lock:
            share = self.shares[index]
            if not share.live:
                return False
            share.live = False
            share.recheck_after = RECHECK_FIRST_S
            share.recheck_at = self._clock() + share.recheck_after
            return True

    def move(self, camera) -> int | None:
        """The camera's server is down: the live server it moves to (None: none is live, it stays unplaced)."""
        with self._lock:
            index = self._where.pop(camera, None)
            if index is not None:
                self.shares[index].cameras -= 1
                self.shares[index].cameras_moved_away += 1
            return self._seat(camera, self._least_loaded())

    def due_for_check(self) -> list[int]:
        """Down servers whose back-off has passed; each is handed to one caller, then waits twice as long."""
        now = self._clock()
        with self._lock:
            due = [i for i, share in enumerate(self.shares) if not share.live and share.recheck_at <= now]
            for index in due:
                share = self.shares[index]
                share.recheck_after = min(2 * share.recheck_after, RECHECK_MAX_S)
                share.recheck_at = now + share.recheck_after
            return due

    def mark_live(self, index: int) -> None:
        with self._lock:
            self.shares[index].live = True

    def report(self) -> list[dict]:
        with self._lock:
            return [share.report() for share in self.shares]
