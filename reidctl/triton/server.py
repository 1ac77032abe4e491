"""The bundled Triton server: start it in the background, report on it and stop it.

Its files (the unpacked nvidia-pytriton wheel) come from reidctl.triton.install; `setup-triton`'s sequence of
these steps is reidctl.triton.setup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from reidctl.errors import ReidctlError
from reidctl.io.atomic import ensure_writable_dir, write_secret, write_text_atomic
from reidctl.io.cores import available_cpus, move_processes, process_tree, thread_on
from reidctl.triton import watchdog
from reidctl.triton.access import (
    LOCAL_ADDRESS,
    check_listen_address,
    connect_address,
    exposure_warning,
    is_loopback,
    key_headers,
    read_key,
    restricted_api_options,
)
from reidctl.triton.install import cache_dir, install_server_files, python_backend_dir, server_environment
from reidctl.triton.repository import batch_input_bytes, served_models

START_COMMAND = "reidctl setup-triton --start"
KEY_FILE = "server.key"  # in the state directory of a repository's servers, mode 0600


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    def items(self) -> list[tuple[str, int]]:
        return [("HTTP", self.http), ("gRPC", self.grpc), ("metrics", self.metrics)]


@dataclass(frozen=True)
class ServerState:
    """What a started server leaves in its state file, so that --status and --stop find it."""

    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log: str
    models: list[str]
    listen: str = LOCAL_ADDRESS
    key_file: str = ""  # the restricted APIs' key (mode 0600), sent by reidctl's own clients
    cpus: list[int] = field(default_factory=list)  # the cores all its threads run on; none: every core

    @property
    def ports(self) -> Ports:
        return Ports(self.http_port, self.grpc_port, self.metrics_port)

    @property
    def host(self) -> str:
        """Where a client on this host reaches the server."""
        return connect_address(self.listen)

    def key(self) -> str | None:
        return read_key(Path(self.key_file)) if self.key_file else None

    def key_headers(self, protocol: str = "http") -> dict[str, str]:
        return key_headers(self.key(), protocol)


def state_dir(repository: Path, cache: Path | None = None) -> Path:
    """Per repository, so that servers of different repositories do not meet. Only its owner may enter it: it
    holds the server's key."""
    key = hashlib.sha1(str(Path(repository).resolve()).encode()).hexdigest()[:12]
    return Path(cache or cache_dir()) / "servers" / key


def _state_file(repository: Path, cache: Path | None) -> Path:
    return state_dir(repository, cache) / "server.json"


def _server_key(directory: Path) -> tuple[Path, str]:
    """The key of the servers started for one repository, made once: clients that hold it keep working when the
    server restarts."""
    path = directory / KEY_FILE
    key = read_key(path)
    if key is None:
        key = secrets.token_urlsafe(32)
        write_secret(path, key + "\n")
    return path, key


def is_tritonserver(pid: int) -> bool:
    """Alive and still a tritonserver (not a zombie, not a recycled pid)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if this process started it and it has exited
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and command.endswith(b"tritonserver")


def read_state(repository: Path, cache: Path | None = None) -> ServerState | None:
    path = _state_file(repository, cache)
    try:
        return ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_server(repository: Path, cache: Path | None = None) -> ServerState | None:
    """The server started for ``repository`` if it still runs; a stale state file is removed."""
    state = read_state(repository, cache)
    if state is None:
        return None
    if is_tritonserver(state.pid):
        return state
    _state_file(repository, cache).unlink(missing_ok=True)
    return None


def all_running_servers(cache: Path | None = None) -> list[ServerState]:
    states = []
    for path in sorted((Path(cache or cache_dir()) / "servers").glob("*/server.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = ServerState(**json.loads(path.read_text()))
            if is_tritonserver(state.pid):
                states.append(state)
    return states


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: sockets in TIME_WAIT from a server just stopped do not count, listeners do.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_ports(ports: Ports) -> None:
    numbers = [port for _, port in ports.items()]
    if len(set(numbers)) != len(numbers):
        raise ReidctlError(f"the HTTP, gRPC and metrics ports must differ, got {numbers}")
    for label, port in ports.items():
        if port_in_use(port):
            raise ReidctlError(
                f"port {port} ({label}) is already in use: stop what listens there or choose another port"
            )


def _http_json(port: int, path: str, method: str = "GET", timeout: float = 2.0, host: str = LOCAL_ADDRESS,
               headers: dict[str, str] | None = None):
    request = urllib.request.Request(
        f"http://{_url_host(host)}:{port}{path}", method=method, data=b"{}" if method == "POST" else None,
        headers=headers or {},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def server_answers(port: int, path: str = "/v2/health/ready", host: str = LOCAL_ADDRESS) -> bool:
    try:
        _http_json(port, path, host=host)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def model_states(state: ServerState) -> list[dict]:
    """The repository index (a restricted API: sent with the server's key): name, version, state (READY,
    UNAVAILABLE...) and reason per model."""
    try:
        return _http_json(state.http_port, "/v2/repository/index", method="POST", host=state.host,
                          headers=state.key_headers()) or []
    except (urllib.error.URLError, OSError, ValueError):
        return []


def reason_line(reason: str) -> str:
    """A model's load failure in one line: Triton appends the Python traceback after the message."""
    lines = (reason or "").strip().splitlines()
    return (lines[0] if lines else "no reason given").removeprefix("Internal: ")[:300]


def _log_error(log: Path) -> str:
    """The most telling line of a failed server's log."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if re.match(r"E\d{4} ", line)]  # glog's error lines
    return (errors or lines or ["nothing in its log (its output is buffered: a signal loses it)"])[-1][:300]


def exit_description(returncode: int) -> str:
    """'exited with status 1' or 'was killed by SIGKILL' (Popen's negative return code)."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM (Triton unloads its models, ends its stubs and removes their shared memory), SIGKILL after
    ``timeout``; then the stubs still there are ended with their shared memory (a SIGKILL of the whole group would
    leave their regions behind), and anything else of the group is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_tritonserver(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # a server that ignored SIGTERM (e.g. while it loads its models)
    while is_tritonserver(pid):
        time.sleep(0.05)
    watchdog.end_stubs([stub for stub in watchdog.python_stubs() if stub.group == pid])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    watchdog.remove_unheld_regions()  # regions made for a stub that was not running


def end_orphaned_stubs(cache: Path | None = None) -> list[int]:
    """Kill the python backend stubs of this cache's server files whose server is gone (dead, or a zombie that
    nobody reaped), and remove their shared memory; returns their pids. Normally the watchdog started with each
    server does this at once; this covers servers started without one or a watchdog that was killed too."""
    root = Path(cache or cache_dir()).resolve()
    orphans = [
        stub for stub in watchdog.python_stubs()
        if Path(stub.executable).is_relative_to(root) and not is_tritonserver(stub.parent)
    ]  # fmt: skip
    watchdog.end_stubs(orphans)
    return [stub.pid for stub in orphans]


def remove_orphaned_regions(warn: Callable[[str], None] | None = None) -> None:
    """Remove the python backend regions of this user that no process holds (watchdog.remove_unheld_regions)."""
    removed = watchdog.remove_unheld_regions()
    if removed and warn:
        warn(f"warning: removed {len(removed)} python backend shared-memory region(s) in {watchdog.SHM_DIR} left by a "
             "server that is gone")


def _start_watchdog(server_pid: int) -> None:
    """The server's stubs die with it (see watchdog.py); its own session, so that Ctrl-C here does not end it."""
    subprocess.Popen(
        [sys.executable, "-I", watchdog.__file__, str(server_pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def python_shared_memory_options(repository: Path, models: list[str]) -> list[str]:
    """The python backend passes tensors to its stubs through a shared-memory pool that starts at 1 MiB and
    grows by 1 MiB: size it for two full input batches from the start, so that the server's input copy of a batch
    does not wait for the pool to grow."""
    pool = max(2**20, 2 * max(batch_input_bytes(repository, model) for model in models))
    return [
        f"--backend-config=python,shm-default-byte-size={pool}",
        f"--backend-config=python,shm-growth-byte-size={pool}",
    ]


def _serving_view(repository: Path, models: list[str], directory: Path) -> Path:
    """A model repository holding only ``models`` (links into ``repository``): the server loads every model of it at
    start and accepts no model control afterwards, so no client can load code into it."""
    view = directory / "models"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    for name in models:
        (view / name).symlink_to(repository / name, target_is_directory=True)
    return view


def start_server(
    repository: Path,
    ports: Ports,
    cache: Path | None = None,
    timeout: float = 300.0,
    on_progress: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = print,
    listen: str = LOCAL_ADDRESS,
    cpus: list[int] | None = None,
) -> ServerState:
    """Start tritonserver on ``repository``'s python-backend models in the background and wait until it is ready.

    It listens on ``listen`` only (this host by default; anything else is warned about), loads its models at start
    and accepts no model loading afterwards; the APIs in RESTRICTED_APIS need the key written (mode 0600) into its
    state directory. Models that fail to load are reported (one warning each); if none loads, the server is stopped
    and the first model's reason is the error. With ``cpus`` the server, its stubs and every thread they start run
    on those cores only.
    """
    listen = check_listen_address(listen)
    repository = Path(repository).resolve()
    cache = Path(cache or cache_dir())
    running = running_server(repository, cache)
    if running:
        raise ReidctlError(
            f"a Triton server (pid {running.pid}) already serves {repository} on gRPC port {running.grpc_port}"
        )
    if not repository.is_dir():
        raise ReidctlError(f"model repository {repository} does not exist: run `reidctl setup-triton` first")
    models = served_models(repository, "python")
    if not models:
        raise ReidctlError(
            f"{repository} has no python-backend model for the bundled server: run `reidctl setup-triton` first"
        )
    check_ports(ports)
    orphans = end_orphaned_stubs(cache)
    if orphans:
        warn(f"warning: ended {len(orphans)} python backend stub(s) left by a server that is gone (pids {orphans})")
    remove_orphaned_regions(warn)
    files = install_server_files(cache, on_progress)
    backends = python_backend_dir(files)

    directory = state_dir(repository, cache)
    ensure_writable_dir(directory)
    for private in (directory.parent, directory):
        private.chmod(0o700)
    log = directory / "tritonserver.log"
    key_file, key = _server_key(directory)
    if not is_loopback(listen):
        warn(exposure_warning(listen, ports, key_file))
    command = [
        str(files.binary),
        # The bundled server has no TensorRT backend: it serves a view of the models it can run.
        f"--model-repository={_serving_view(repository, models, directory)}",
        f"--backend-directory={backends}",
        "--model-control-mode=none",
        *(f"--{api}-address={listen}" for api in ("http", "grpc", "metrics")),
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        *restricted_api_options(key),
        "--exit-on-error=false",  # a model that fails to load is reported, the others still serve
        "--exit-timeout-secs=10",
        *python_shared_memory_options(repository, models),
    ]
    if on_progress:
        on_progress(f"starting tritonserver (log: {log})")
    log.unlink(missing_ok=True)  # a new log, created for this user only
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as log_file, thread_on(cpus):
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=server_environment(files), cwd=directory, start_new_session=True,
            umask=0o077,  # what it creates is for this user only
        )  # fmt: skip
    _start_watchdog(process.pid)
    state = ServerState(process.pid, ports.http, ports.grpc, ports.metrics, str(repository), str(log), models,
                        listen, str(key_file), sorted(cpus or []))
    _write_state(state, cache)
    try:
        _wait_until_ready(state, process, timeout, on_progress, warn)
    except BaseException:  # Ctrl-C or failure: leave no half-started server behind
        _terminate(process.pid, timeout=10)
        _state_file(repository, cache).unlink(missing_ok=True)
        raise
    return state


def _write_state(state: ServerState, cache: Path | None) -> None:
    write_text_atomic(_state_file(Path(state.repository), cache), json.dumps(asdict(state), indent=2))


def move_server(state: ServerState, cpus: list[int] | None, cache: Path | None = None) -> ServerState:
    """The running server's processes, every thread, onto ``cpus`` (None: every core this process may use), and its
    state file saying so: detect through it keeps off those cores from its next run."""
    move_processes(process_tree(state.pid), cpus or available_cpus())
    moved = replace(state, cpus=sorted(cpus or []))
    _write_state(moved, cache)
    return moved


def _wait_until_ready(state: ServerState, process: subprocess.Popen, timeout: float, on_progress, warn) -> None:
    """Triton opens its endpoints once the startup loads are over (ready or failed): then judge each model."""
    log = Path(state.log)
    start = time.monotonic()
    while not server_answers(state.http_port, "/v2/health/live", state.host):
        if process.poll() is not None:  # its exit status, which is_tritonserver's reaping would lose
            raise ReidctlError(
                f"tritonserver {exit_description(process.returncode)} during startup: {_log_error(log)} (log: {log})"
            )
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise ReidctlError(f"tritonserver was not ready after {timeout:.0f} s (log: {log})")
        if on_progress:
            on_progress(f"loading {', '.join(state.models)} ({elapsed:.0f} s)")
        time.sleep(0.25)
    by_name = {m.get("name"): m for m in model_states(state)}
    failed = [(name, by_name.get(name, {})) for name in state.models if by_name.get(name, {}).get("state") != "READY"]
    if len(failed) == len(state.models):
        name, status = failed[0]
        raise ReidctlError(f"model '{name}' failed to load: {reason_line(status.get('reason', ''))} (log: {log})")
    for name, status in failed:
        warn(f"warning: model '{name}' failed to load: {reason_line(status.get('reason', ''))} (log: {log})")
    make_shared_memory_private(state.pid)


def make_shared_memory_private(server_pid: int) -> None:
    """The python backend creates its stubs' /dev/shm regions (which carry the frames) readable by every user
    whatever the umask: once the models are loaded, only this user may open them."""
    for stub in watchdog.python_stubs():
        if stub.group == server_pid:
            for region in stub.shm_regions:
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"/dev/shm/{region}", 0o600)


def stop_server(repository: Path, cache: Path | None = None, timeout: float = 30.0) -> ServerState | None:
    """Stop the server started for ``repository``; None when none runs. Stubs that a dead server left are ended
    either way."""
    state = running_server(repository, cache)
    if state is not None:
        _terminate(state.pid, timeout)
        _state_file(repository, cache).unlink(missing_ok=True)
    end_orphaned_stubs(cache)
    remove_orphaned_regions()
    return state
