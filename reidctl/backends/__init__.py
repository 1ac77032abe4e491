"""Built-in backends; each module registers itself with reidctl.engine.detector."""

from reidctl.backends import pytorch  # noqa: F401
