"""Atomic file output: a file appears complete under its final name or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reidctl.errors import ReidctlError


def ensure_writable_dir(directory: Path) -> None:
    """Make ``directory`` (its parents too) and fail in one line where it could not take new files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReidctlError(f"cannot create output directory {directory}: {exc.strerror}") from None
    check_writable_dir(directory)


def check_writable_dir(directory: Path) -> None:
    """Fail in one line, creating nothing, where ``directory`` could not take new files (made first if missing).

    A probe file, gone at once, is created in its nearest existing ancestor: permission bits do not tell, since
    root passes ``os.access`` where writes still fail (``/proc``, a read-only mount).
    """
    given = Path(os.path.abspath(directory))
    existing = given
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ReidctlError(f"cannot create output directory {directory}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        if existing == given:
            raise ReidctlError(f"cannot write to {directory}: {exc.strerror}") from None
        raise ReidctlError(f"cannot create output directory {directory}: {existing} takes no new files "
                           f"({exc.strerror})") from None


def check_output_path(path: Path) -> Path:
    """Fail in one line, before any work, where ``path`` could not be written atomically later."""
    path = Path(path)
    if path.is_dir():
        raise ReidctlError(f"output {path} is a directory: give a file name")
    if path.exists() and not path.is_file():
        raise ReidctlError(f"output {path} is not a regular file")
    ensure_writable_dir(path.parent)
    return path


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` on ``commit()``, or vanishes on ``discard()``."""

    def __init__(self, path: Path, suffix: str | None = None):
        self.path = Path(path)
        ensure_writable_dir(self.path.parent)
        if self.path.is_dir():
            raise ReidctlError(f"output {self.path} is a directory: give a file path")
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=suffix or self.path.suffix or ".tmp", dir=self.path.parent
            )
        except OSError as exc:
            raise ReidctlError(f"cannot write output file {self.path}: {exc.strerror}") from None
        os.close(fd)
        self.tmp = Path(tmp_name)
        # mkstemp creates 0600; outputs get the permissions a plain open() would give them.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block completes.

    Any exception, Ctrl-C included, removes the temporary file, so no half-written output is left.
    """
    target = AtomicFile(path, suffix)
    try:
        yield target.tmp
        target.commit()
    finally:
        target.discard()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_secret(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (mkstemp's 0600 is kept)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Every byte of ``data`` at ``offset``, or an OSError (a write may take part of it when the disk fills)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
