"""What `reidctl setup-triton` does: check or stop the bundled server, or write the model repository and start
the server on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reidctl.config import Config, override
from reidctl.io.cores import parse_cpu_list
from reidctl.triton.compose import DEFAULT_IMAGE
from reidctl.triton.repository import WrittenFile, server_compiles, write_repository
from reidctl.triton.server import (
    Ports,
    ServerState,
    model_states,
    running_server,
    server_answers,
    start_server,
    stop_server,
)


@dataclass
class ServerStatus:
    """For --status: the server started for a repository if one runs, its readiness and each model's state."""

    repository: str
    state: ServerState | None = None  # None: none runs
    ready: bool = False
    model_states: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Running or not, pid, ports, readiness and each model's state."""
        if self.state is None:
            return {"running": False, "repository": self.repository}
        return {"running": True, **asdict(self.state), "ready": self.ready, "model_states": self.model_states}


def server_status(repository: Path, cache: Path | None = None) -> ServerStatus:
    """The server started for ``repository``, for --status."""
    state = running_server(repository, cache)
    if state is None:
        return ServerStatus(str(Path(repository).resolve()))
    return ServerStatus(state.repository, state, server_answers(state.http_port, host=state.host), model_states(state))


@dataclass
class Setup:
    """What `setup-triton` did, for the command line to say."""

    done: str  # status | stopped | running (--start found the server running: nothing written) | written | started
    repository: Path
    status: ServerStatus | None = None  # status
    server: ServerState | None = None  # stopped (None: none was running), running, started


def setup_triton(
    config: Config,
    repository: Path | None = None,
    action: str | None = None,
    engine: Path | None = None,
    image: str = DEFAULT_IMAGE,
    replicas: int = 1,
    compile_model: bool | None = None,
    timeout: float = 300.0,
    on_written: Callable[[Path, list[WrittenFile]], None] = lambda repository, written: None,
    on_progress: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = print,
) -> Setup:
    """`setup-triton` on ``repository`` (default: the config's). ``action`` "status" or "stop" checks or stops its
    bundled server and writes nothing; otherwise the repository is written (``on_written`` hears what, before any
    start) and with "start" the bundled server is started, unless one already serves it (then nothing is written).
    ``compile_model`` None: torch.compile the python model where ``server_compiles`` says."""
    repository = Path(repository or config.detection.triton.repository)
    if compile_model is None:  # the default depends on where the server model runs
        compile_model = server_compiles(config.detection)
    config = override(config, compile=compile_model)
    if action == "status":
        return Setup("status", repository, status=server_status(repository))
    if action == "stop":
        return Setup("stopped", repository, server=stop_server(repository))
    running = running_server(repository) if action == "start" else None
    if running:
        return Setup("running", repository, server=running)
    triton = config.detection.triton
    cpus = None  # checked before anything is written
    if action == "start" and triton.server_cpus:
        cpus = parse_cpu_list(triton.server_cpus, "--cpus (detection.triton.server_cpus)")
    on_written(repository, write_repository(config, repository, engine, image, warn=warn, replicas=replicas))
    if action != "start":
        return Setup("written", repository)
    ports = Ports(triton.http_port, triton.grpc_port, triton.metrics_port)
    state = start_server(repository, ports, timeout=timeout, on_progress=on_progress, warn=warn, listen=triton.listen,
                         cpus=cpus)
    return Setup("started", repository, server=state)
