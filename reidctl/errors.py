"""Errors a user can act on: the CLI prints the message as one line and exits non-zero."""

import sys


class ReidctlError(Exception):
    """A failure caused by input, environment or configuration, explained in one line."""


class BackendUnavailable(ReidctlError):
    """A backend cannot run here (missing package, GPU or server); the message says what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, timeout), raised in the main thread: it stops a command as Ctrl-C does."""


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of a foreign error's message, cut to ``limit``: how it becomes part of a one-line error.

    An exception without a message gives its type name; an empty text stays empty.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return text.splitlines()[0][:limit]


def describe_error(error: BaseException) -> str:
    """An exception as part of a one-line error: a ReidctlError's own message; any other, its type and first line."""
    return str(error) if isinstance(error, ReidctlError) else f"{type(error).__name__}: {first_line(error)}"


def print_warning(message: str) -> None:
    """The default warning channel of the engine layer: one line on stderr (the CLI passes its own, styled)."""
    print(message, file=sys.stderr)
