"""The bundled Triton server's files: the nvidia-pytriton wheel, found or downloaded, unpacked once into a cache.

The server comes from the nvidia-pytriton wheel (a real tritonserver with the python backend), unpacked into a
cache directory, never installed into the project's environment: its pins (numpy<2, tritonclient~=2.50) would
downgrade the project's packages. Machines without network take the wheel from REIDCTL_TRITON_WHEEL_DIR or the
repository's .whl/ folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import reidctl
from reidctl.errors import ReidctlError
from reidctl.io.atomic import ensure_writable_dir
from reidctl.triton import watchdog

PYTRITON_VERSION = "0.7.0"
CACHE_ENV = "REIDCTL_CACHE"
WHEEL_DIR_ENV = "REIDCTL_TRITON_WHEEL_DIR"
SYS_PATH_ENV = "REIDCTL_SYS_PATH"  # read by the python model: the stub ignores PYTHONPATH
PROJECT_ROOT = Path(reidctl.__file__).resolve().parents[1]
STUB_NAME = watchdog.STUB_NAME


def cache_dir() -> Path:
    """$REIDCTL_CACHE/triton, else ~/.cache/reidctl/triton (XDG_CACHE_HOME respected)."""
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reidctl"
    return Path(base) / "triton"


@dataclass(frozen=True)
class ServerFiles:
    """The unpacked wheel: pytriton/tritonserver/ (binary, python backend, stubs) and nvidia_pytriton.libs/."""

    root: Path

    @property
    def tritonserver(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.tritonserver / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    def stub(self, version: tuple[int, int]) -> Path:
        return self.tritonserver / "python_backend_stubs" / f"{version[0]}.{version[1]}" / STUB_NAME

    def stub_versions(self) -> list[str]:
        found = (p.parent.name for p in (self.tritonserver / "python_backend_stubs").glob(f"*/{STUB_NAME}"))
        return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer per cache directory at a time (parallel test sessions, two shells)."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wheel_dirs() -> list[Path]:
    dirs = [Path(os.environ[WHEEL_DIR_ENV])] if os.environ.get(WHEEL_DIR_ENV) else []
    return [*dirs, PROJECT_ROOT / ".whl"]


def find_wheel() -> Path | None:
    for directory in _wheel_dirs():
        wheels = sorted(directory.rglob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))  # e.g. .whl/triton-server/
        if wheels:
            return wheels[-1]
    return None


def _download_wheel(into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        f"nvidia-pytriton=={PYTRITON_VERSION}",
        "--dest",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("nvidia_pytriton-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"pip exited with {result.returncode}"
        raise ReidctlError(
            f"cannot download nvidia-pytriton {PYTRITON_VERSION} ({reason}): put its wheel in ${WHEEL_DIR_ENV} "
            f"or {PROJECT_ROOT / '.whl'}"
        )
    return wheels[-1]


def _unpack(wheel: Path, target: Path) -> None:
    """Extract only the server (not the pytriton Python package), keeping executable bits, then rename into place."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if not member.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    continue
                extracted = Path(archive.extract(member, staging))
                mode = member.external_attr >> 16
                if mode and not member.is_dir():
                    extracted.chmod(mode & 0o777)
        os.replace(staging, target)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReidctlError(f"cannot unpack {wheel}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_server_files(cache: Path | None = None, on_progress: Callable[[str], None] | None = None) -> ServerFiles:
    """The server files in ``cache``, downloaded (or taken from a local wheel) and unpacked once."""
    cache = Path(cache or cache_dir())
    files = ServerFiles(cache / f"nvidia-pytriton-{PYTRITON_VERSION}")
    if files.binary.is_file():
        return files
    ensure_writable_dir(cache)
    with _locked(cache / ".install.lock"):
        if files.binary.is_file():
            return files
        wheel = find_wheel()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as download_dir:
            if wheel is None:
                if on_progress:
                    on_progress(f"downloading nvidia-pytriton {PYTRITON_VERSION} (55 MB) into {cache}")
                wheel = _download_wheel(Path(download_dir))
            if on_progress:
                on_progress(f"unpacking {wheel.name}")
            _unpack(wheel, files.root)
    return files


def python_backend_dir(files: ServerFiles, version: tuple[int, int] | None = None) -> Path:
    """A --backend-directory whose python/ holds the python backend and the stub for this Python version."""
    version = version or sys.version_info[:2]
    stub = files.stub(version)
    if not stub.is_file():
        raise ReidctlError(
            f"the bundled Triton server has no python backend stub for Python {version[0]}.{version[1]} "
            f"(nvidia-pytriton {PYTRITON_VERSION} has {', '.join(files.stub_versions())}): run reidctl on one of those"
        )
    backends = files.root / f"backends-py{version[0]}.{version[1]}"
    python_dir = backends / "python"
    if not (python_dir / STUB_NAME).is_file():
        staging = Path(tempfile.mkdtemp(prefix=".python-", dir=files.root))
        source = files.tritonserver / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(source / name, staging / name)
        shutil.copy2(stub, staging / STUB_NAME)
        backends.mkdir(exist_ok=True)
        try:
            os.replace(staging, python_dir)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return backends


def server_environment(files: ServerFiles) -> dict[str, str]:
    """The stub must load *this* interpreter's libpython (not an older system one) and find the project's paths."""
    env = dict(os.environ)
    library_path = [sysconfig.get_config_var("LIBDIR") or "", str(files.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in library_path if p)
    paths = [str(PROJECT_ROOT), *(p for p in sys.path if p and Path(p).is_dir())]
    env[SYS_PATH_ENV] = os.pathsep.join(dict.fromkeys(paths))
    return env
