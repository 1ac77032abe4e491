"""`python -m reidctl` runs the CLI (the same as the `reidctl` command)."""

from reidctl.cli import app

app(prog_name="reidctl")
