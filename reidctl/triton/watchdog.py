"""Ends what a bundled tritonserver leaves behind when it dies: its python backend stubs and their shared memory.

A stub checks every 300 ms that its server exists (kill(pid, 0)), which a killed server passes until it is reaped,
and it ignores SIGTERM: a stub outliving its server keeps ~1 GB of memory and a /dev/shm region. PR_SET_PDEATHSIG
cannot help: only the forked process itself can set it and the server forks the stubs. So beside every server it
starts, reidctl runs ``python -I watchdog.py PID``: it waits for the server's death through a pidfd (which works for
a process that is not its child and fires at the death, before any reaping) and then kills the stubs left in the
server's process group. Standard library only, so that it starts fast and holds little memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"  # the stub's argument naming its /dev/shm region
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class Stub:
    pid: int
    parent: int
    group: int
    executable: str
    shm_regions: tuple[str, ...]


def python_stubs() -> list[Stub]:
    """Every live triton_python_backend_stub process on this host."""
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not argv[0].endswith(STUB_NAME):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            if fields[0] == "Z":
                continue
            regions = tuple(arg for arg in argv if arg.startswith(SHM_REGION_PREFIX))
            stubs.append(Stub(int(entry.name), int(fields[1]), int(fields[2]), argv[0], regions))
    return stubs


def end_stubs(stubs: list[Stub], timeout: float = 5.0) -> None:
    """SIGKILL (they ignore SIGTERM), wait until they are gone, then remove their shared-memory regions."""
    for stub in stubs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stub.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(stub.pid) for stub in stubs):
        time.sleep(0.05)
    for stub in stubs:
        for region in stub.shm_regions:
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{region}")


def remove_unheld_regions() -> list[str]:
    """Remove the python backend's /dev/shm regions of this user that no process holds open or mapped, and return
    their names: a server killed before it removed them (it creates them; a stub only maps them) leaves them.

    Only where this process sees every process of the host: in a PID namespace of its own, a holder could be
    outside it. The regions are listed before their holders are looked for, so a region a server creates meanwhile
    is not among them, and one listed is held (open, then mapped) by its server until the server is gone.
    """
    if not _sees_every_process():
        return []
    uid = os.getuid()
    with os.scandir(SHM_DIR) as entries:
        candidates = [entry.name for entry in entries if entry.name.startswith(SHM_REGION_PREFIX)
                      and entry.stat(follow_symlinks=False).st_uid == uid]  # fmt: skip
    if not candidates:
        return []
    held = _held_shm_files()
    removed = []
    for name in candidates:
        if name not in held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{SHM_DIR}/{name}")
                removed.append(name)
    return removed


def _sees_every_process() -> bool:
    """In the host's PID namespace, where pid 2 is the kernel's kthreadd."""
    try:
        return Path("/proc/2/stat").read_text().split()[1] == "(kthreadd)"
    except (OSError, IndexError):
        return False


def _held_shm_files() -> set[str]:
    """Names of the /dev/shm files some process holds: open (its fds first, then its mappings, so that a region
    opened and mapped, then closed meanwhile, is still seen) or mapped."""
    held = set()
    prefix = f"{SHM_DIR}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    held.add(os.readlink(fd))
        with contextlib.suppress(OSError):
            held.update(line.split(maxsplit=5)[-1] for line in (entry / "maps").read_text().splitlines())
    return {path.removeprefix(prefix).removesuffix(" (deleted)") for path in held if path.startswith(prefix)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def watch(server_pid: int) -> None:
    """Wait until ``server_pid`` dies, then end the stubs of its process group (it leads its own session)."""
    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        pidfd = None  # already gone: clean up at once
    if pidfd is not None:
        select.select([pidfd], [], [])
        os.close(pidfd)
    end_stubs([stub for stub in python_stubs() if stub.group == server_pid])
    remove_unheld_regions()  # those of a stub that was not running (yet, or any more) when the server died


if __name__ == "__main__":
    watch(int(sys.argv[1]))
