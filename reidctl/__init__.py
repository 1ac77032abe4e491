"""reidctl: person detection for multi-camera ReID pipelines."""

__version__ = "0.1.0"
