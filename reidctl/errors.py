"""Errors a user can act on: the CLI prints the message as one line and exits non-zero."""


class ReidctlError(Exception):
    """A failure caused by input, environment or configuration, explained in one line."""


class BackendUnavailable(ReidctlError):
    """A backend cannot run here (missing package, GPU or server); the message says what to do."""
