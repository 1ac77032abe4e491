"""`reidctl` command line: each command parses options and calls the engine layer."""

from reidctl.cli import detect  # noqa: F401  (registers its command)
from reidctl.cli import export  # noqa: F401  (registers its commands)
from reidctl.cli import triton  # noqa: F401  (registers its command)
from reidctl.cli import bench  # noqa: F401  (registers its command)
from reidctl.cli import recommend  # noqa: F401  (registers its command)
from reidctl.cli import track  # noqa: F401  (registers its command)
from reidctl.cli.app import app

__all__ = ["app"]
