"""The loader of the detection model: the configured checkpoint, or untrained weights said once; Conv+BN fusion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reidctl.errors import print_warning
from reidctl.models.checkpoint import ModelSpec, load_model
from reidctl.models.yolox import YOLOX, BaseConv

UNTRAINED_WARNING = "warning: no checkpoint given (detection.model_path): the model's weights are untrained"


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm into the preceding conv (inference only): one kernel instead of two."""
    for module in model.modules():
        if isinstance(module, BaseConv) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return model


def load_detection_model(detection, warn: Callable[[str], None] = print_warning) -> tuple[YOLOX, ModelSpec]:
    """The loader: the configured checkpoint (or untrained weights, with one warning line)."""
    path = Path(detection.model_path) if detection.model_path else None
    if path is None:
        warn(UNTRAINED_WARNING)
    return load_model(path, detection.model_type, detection.num_classes)
