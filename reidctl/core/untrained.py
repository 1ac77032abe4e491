"""Untrained YOLOX that behaves numerically like a trained one: for tests and synthetic detection loads."""

from __future__ import annotations

import torch
from torch import nn

from reidctl.core.preprocess import sample_input
from reidctl.models.yolox import YOLOX, build_yolox

CALIBRATION_SIZE = (128, 160)


def lively_yolox(
    size: str = "nano", num_classes: int = 1, seed: int = 0, calibration: torch.Tensor | None = None
) -> YOLOX:
    """YOLOX of ``size`` (eval mode) whose activations stay alive, with scores spread over (0, 1).

    Plain random init lets activations vanish (every frame gives the same output, so backend comparisons
    prove little); BatchNorm statistics calibrated on real-range inputs with a BN gain of 0.25 keep them alive
    yet insensitive (input noise 1e-3 moves scores by under 0.01), so fp16 can be checked against fp32 meaningfully.
    Head outputs are scaled to logits of std 1.5 (scores spread over (0, 1), so frames give detections) and
    box log-sizes of std 0.25. Calibrated at 128x160 whatever size the model later runs at, on random pixels; or on
    ``calibration`` (normalised frames, (B, 3, H, W)) when given: a deep model calibrated on noise at a small size
    explodes on real frames at 640x640 (YOLOX-X: box log-sizes of +-1e6, so infinite boxes).
    """
    batches = [calibration] * 3 if calibration is not None else None
    torch.manual_seed(seed)
    model = build_yolox(size, num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            nn.init.constant_(module.weight, 0.25)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(batches[i] if batches else sample_input(4, CALIBRATION_SIZE, seed=100 + i))
        model.eval()
        # A channel nearly constant over the calibration frames gets a tiny variance, and dividing by it multiplies
        # any rounding difference: YOLOX-X's scores moved by 0.7 for 1e-3 input noise, by 0.84 in fp16 and by 0.19
        # in ONNX Runtime against PyTorch fp32. The layer's median variance as a floor brings noise's effect under 0.01.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.clamp_(min=float(module.running_var.median()))
        head = model.head
        head_input = calibration if calibration is not None else sample_input(2, CALIBRATION_SIZE, seed=7)
        for level, features in enumerate(model.backbone(head_input)):
            stem = head.stems[level](features)
            cls_features, reg_features = head.cls_convs[level](stem), head.reg_convs[level](stem)
            targets = (
                (head.cls_preds[level], cls_features, 1.5),
                (head.obj_preds[level], reg_features, 1.5),
                (head.reg_preds[level], reg_features, 0.25),
            )
            for pred, feats, std in targets:
                nn.init.zeros_(pred.bias)
                pred.weight.mul_(std / pred(feats).std())
    return model
