"""The one rule every command applies to its paths before any work: no two outputs on one path, no output on an
input, and no output folder that holds someone else's files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from reidctl.errors import ReidctlError

Named = tuple[str, Path | str | None]  # what names the path ("--output", "the plot of --output"), and the path


def _identity(path: Path) -> tuple:
    """One key per file: the real path (symlinks followed, '..' gone), or the inode of an existing file, so that a
    hard link or a second spelling of a path still meets the first."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return ("path", real)
    return ("inode", stat.st_dev, stat.st_ino)


def refuse_shared_paths(outputs: Sequence[Named], inputs: Sequence[Named] = ()) -> None:
    """A one-line error where two outputs would write one path, or an output would write over an input."""
    read = {_identity(Path(path)): name for name, path in inputs if path is not None}
    written: dict[tuple, str] = {}
    for name, path in outputs:
        if path is None:
            continue
        key = _identity(Path(path))
        if key in read:
            raise ReidctlError(f"{name} would write over {read[key]} ({path}): give the output another path")
        if key in written:
            raise ReidctlError(f"{written[key]} and {name} both write {path}: give each output its own path")
        written[key] = name


def refuse_foreign_files(directory: Path, own: Iterable[str], option: str) -> None:
    """A folder an option writes its files into may already hold those files (a previous run's), nothing else."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ReidctlError(f"{option} {directory} is a file: give a folder")
    own = set(own)
    foreign = sorted(entry.name for entry in directory.iterdir() if entry.name not in own)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ReidctlError(
            f"{option} {directory} holds other files ({foreign[0]}{more}): give an empty or new folder"
        )
