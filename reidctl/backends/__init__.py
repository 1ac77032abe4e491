"""Built-in backends; each module registers itself with reidctl.engine.detector."""

from reidctl.backends import pytorch  # noqa: F401
from reidctl.backends import onnxruntime  # noqa: F401
from reidctl.backends import tensorrt  # noqa: F401
from reidctl.backends import triton  # noqa: F401
