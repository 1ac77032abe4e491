"""The bundled server's python stubs end with it: a real server is killed and no stub, no shared memory is left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_ports, project_env, start_test_server
from reidctl.config import load_config
from reidctl.triton import watchdog
from reidctl.triton.repository import write_repository
from reidctl.triton.install import CACHE_ENV, cache_dir
from reidctl.triton.server import stop_server

# Real Triton servers start here, from a cache of this module's own (below): another worker's servers, started from
# other caches, never end the stubs these tests leave on purpose. A group of their own, so that the two server
# groups may run on two workers at once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("triton-server-lifecycle")]



@pytest.fixture(scope="module", autouse=True)
def server_cache_of_this_module(tmp_path_factory):
    """These servers run from a cache of their own: any other test's server start ends the stubs that dead servers
    left in its cache, and would end the orphans these tests leave on purpose before they are checked."""
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("server-cache"))
    yield
    if previous is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture()
def repository(tmp_path, small_config) -> Path:
    path = tmp_path / "model_repository"
    write_repository(load_config(small_config), path, warn=lambda message: None)
    return path


def stubs_of(server_pid: int) -> list[watchdog.Stub]:
    return [stub for stub in watchdog.python_stubs() if stub.group == server_pid]


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def left_behind(stubs: list[watchdog.Stub]) -> list[str]:
    alive = [f"stub {stub.pid}" for stub in stubs if Path(f"/proc/{stub.pid}").exists()
             and Path(f"/proc/{stub.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]  # fmt: skip
    regions = [region for stub in stubs for region in stub.shm_regions if Path(f"/dev/shm/{region}").exists()]
    return alive + regions


def orphan_a_stub(repository: Path) -> list[watchdog.Stub]:
    """A started server whose watchdog is killed, whose stub is stopped (its own check of the server cannot run)
    and which is then killed: the stub stays, as stubs did before the watchdog."""
    state = start_test_server(repository, warn=lambda message: None)
    stubs = stubs_of(state.pid)
    assert stubs and all(stub.shm_regions for stub in stubs)
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:  # a process that ended while /proc was listed
            continue
        if any(arg.endswith(b"watchdog.py") for arg in argv) and argv[-2:-1] == [str(state.pid).encode()]:
            os.kill(int(entry.name), signal.SIGKILL)
    for stub in stubs:
        os.kill(stub.pid, signal.SIGSTOP)
    os.kill(state.pid, signal.SIGKILL)
    time.sleep(1.0)
    assert len(left_behind(stubs)) == 2 * len(stubs), "the stub should outlive its server here"
    return stubs


def test_stubs_and_their_shared_memory_end_when_the_server_is_killed(repository):
    state = start_test_server(repository, warn=lambda message: None)
    stubs = stubs_of(state.pid)
    assert stubs and all(stub.shm_regions for stub in stubs)
    try:
        os.kill(state.pid, signal.SIGKILL)  # not reaped: this process started it and does not wait for it
        assert wait_until(lambda: not left_behind(stubs), timeout=5.0), left_behind(stubs)
    finally:
        stop_server(repository)


def test_stop_ends_the_stubs_a_dead_server_left(repository):
    stubs = orphan_a_stub(repository)
    config = repository.parent / "config.yaml"
    command = [sys.executable, "-m", "reidctl", "setup-triton", "--stop", "-r", str(repository), "-c", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=project_env())
    assert result.returncode == 0, result.stderr
    assert "no Triton server is running" in result.stdout
    assert not left_behind(stubs)


def test_start_ends_the_stubs_a_dead_server_left(repository):
    stubs = orphan_a_stub(repository)
    warnings = []
    state = start_test_server(repository, warn=warnings.append)
    try:
        assert not left_behind(stubs)
        assert any(f"ended {len(stubs)} python backend stub(s)" in warning for warning in warnings), warnings
        assert stubs_of(state.pid)  # the new server's own stubs are not touched
    finally:
        stop_server(repository)
    assert not stubs_of(state.pid)


def test_orphans_of_another_cache_are_not_touched(repository, tmp_path):
    stubs = orphan_a_stub(repository)
    try:
        stop_server(repository, cache=tmp_path / "other-cache")
        assert len(left_behind(stubs)) == 2 * len(stubs)
    finally:
        stop_server(repository, cache=cache_dir())
    assert not left_behind(stubs)


def kill_watchdog_of(server_pid: int) -> None:
    for entry in Path("/proc").iterdir():
        argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        if any(arg.endswith(b"watchdog.py") for arg in argv) and argv[-2:-1] == [str(server_pid).encode()]:
            os.kill(int(entry.name), signal.SIGKILL)


def test_shared_memory_whose_server_and_stubs_are_gone_is_removed_and_a_held_region_is_not(repository):
    """The server and its stubs SIGKILLed together (as a stop's SIGKILL of the process group did) leave the regions
    the server made: nobody holds them any more, and --stop removes them; a region some process holds stays."""
    held = Path(f"/dev/shm/{watchdog.SHM_REGION_PREFIX}held-by-a-test-{os.getpid()}")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); os.ftruncate(fd, 4096); "
        "region = mmap.mmap(fd, 4096); os.close(fd); print('mapped', flush=True); sys.stdin.read()"), str(held)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "mapped"
        state = start_test_server(repository, warn=lambda message: None)
        stubs = stubs_of(state.pid)
        assert stubs and all(stub.shm_regions for stub in stubs)
        kill_watchdog_of(state.pid)
        os.killpg(state.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(Path(f"/proc/{stub.pid}/stat").exists() and
                                          Path(f"/proc/{stub.pid}/stat").read_text().split()[2] != "Z"
                                          for stub in stubs))  # fmt: skip
        regions = [Path(f"/dev/shm/{region}") for stub in stubs for region in stub.shm_regions]
        # No check that they outlived their server: a server that another test starts or stops on this host meanwhile
        # removes the same unheld regions by the same rule, and the held one must survive that too.
        stop_server(repository)
        assert not any(region.exists() for region in regions)
        assert held.exists()
    finally:
        holder.communicate("", timeout=10)
        held.unlink(missing_ok=True)


def test_a_server_killed_during_startup_is_named_with_its_signal(repository):
    """A server that dies before it writes its first log line: the error names how it ended, not an empty log."""
    from reidctl.errors import ReidctlError
    from reidctl.triton.server import Ports, read_state, start_server

    def kill_it_once_it_runs(message: str) -> None:
        if message.startswith("loading"):
            os.kill(read_state(repository).pid, signal.SIGKILL)

    with pytest.raises(ReidctlError, match="tritonserver was killed by SIGKILL during startup: .* \\(log: "):
        start_server(repository, Ports(*free_ports()), warn=lambda message: None, on_progress=kill_it_once_it_runs)
