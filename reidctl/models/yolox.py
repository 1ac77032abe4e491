"""YOLOX as ByteTrack ships it: CSPDarknet backbone, PAFPN neck, decoupled head.

Module and parameter names mirror ByteTrack's so that its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

STRIDES = (8, 16, 32)
FPN_CHANNELS = (256, 512, 1024)


@dataclass(frozen=True)
class ModelSize:
    depth: float
    width: float
    depthwise: bool = False


# ByteTrack/YOLOX experiment presets; "mot17" is YOLOX-X trained on one class (person).
MODEL_SIZES: dict[str, ModelSize] = {
    "nano": ModelSize(0.33, 0.25, depthwise=True),
    "tiny": ModelSize(0.33, 0.375),
    "s": ModelSize(0.33, 0.50),
    "m": ModelSize(0.67, 0.75),
    "l": ModelSize(1.0, 1.0),
    "x": ModelSize(1.33, 1.25),
}
MODEL_TYPE_ALIASES = {"mot17": ("x", 1), "mot20": ("x", 1), "ablation": ("x", 1)}


class BaseConv(nn.Module):
    """Conv2d -> BatchNorm -> SiLU with 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise conv followed by a pointwise conv (YOLOX-nano)."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int, stride: int = 1):
        super().__init__()
        self.dconv = BaseConv(in_ch, in_ch, ksize, stride, groups=in_ch)
        self.pconv = BaseConv(in_ch, out_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def _conv(depthwise: bool):
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, shortcut: bool, depthwise: bool):
        super().__init__()
        self.conv1 = BaseConv(in_ch, out_ch, 1, 1)
        self.conv2 = _conv(depthwise)(out_ch, out_ch, 3, 1)
        self.use_add = shortcut and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class SPPBottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_sizes=(5, 9, 13)):
        super().__init__()
        hidden = in_ch // 2
        self.conv1 = BaseConv(in_ch, hidden, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class CSPLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n: int, shortcut: bool = True, depthwise: bool = False):
        super().__init__()
        hidden = int(out_ch * 0.5)
        self.conv1 = BaseConv(in_ch, hidden, 1, 1)
        self.conv2 = BaseConv(in_ch, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, out_ch, 1, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, depthwise) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class Focus(nn.Module):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2), then a conv."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int = 3):
        super().__init__()
        self.conv = BaseConv(in_ch * 4, out_ch, ksize, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Patch order (top-left, bottom-left, top-right, bottom-right) is what trained weights expect.
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1)
        return self.conv(x)


class CSPDarknet(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool):
        super().__init__()
        conv = _conv(depthwise)
        base = int(width * 64)
        base_depth = max(round(depth * 3), 1)
        self.stem = Focus(3, base, ksize=3)
        self.dark2 = nn.Sequential(
            conv(base, base * 2, 3, 2), CSPLayer(base * 2, base * 2, base_depth, depthwise=depthwise)
        )
        self.dark3 = nn.Sequential(
            conv(base * 2, base * 4, 3, 2), CSPLayer(base * 4, base * 4, base_depth * 3, depthwise=depthwise)
        )
        self.dark4 = nn.Sequential(
            conv(base * 4, base * 8, 3, 2), CSPLayer(base * 8, base * 8, base_depth * 3, depthwise=depthwise)
        )
        self.dark5 = nn.Sequential(
            conv(base * 8, base * 16, 3, 2),
            SPPBottleneck(base * 16, base * 16),
            CSPLayer(base * 16, base * 16, base_depth, shortcut=False, depthwise=depthwise),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        dark3 = self.dark3(x)
        dark4 = self.dark4(dark3)
        return dark3, dark4, self.dark5(dark4)


class YOLOPAFPN(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool):
        super().__init__()
        c3, c4, c5 = (int(c * width) for c in FPN_CHANNELS)
        n = round(3 * depth)
        conv = _conv(depthwise)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise)
        self.bu_conv2 = conv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise)
        self.bu_conv1 = conv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head. In inference it returns decoded ``(B, anchors, 5 + classes)``:
    cx, cy, w, h in input pixels, objectness and class probabilities (sigmoid applied)."""

    def __init__(self, num_classes: int, width: float, depthwise: bool):
        super().__init__()
        conv = _conv(depthwise)
        hidden = int(256 * width)
        self.num_classes = num_classes
        self.decode = True
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for channels in FPN_CHANNELS:
            self.stems.append(BaseConv(int(channels * width), hidden, 1, 1))
            self.cls_convs.append(nn.Sequential(conv(hidden, hidden, 3, 1), conv(hidden, hidden, 3, 1)))
            self.reg_convs.append(nn.Sequential(conv(hidden, hidden, 3, 1), conv(hidden, hidden, 3, 1)))
            self.cls_preds.append(nn.Conv2d(hidden, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hidden, 4, 1))
            self.obj_preds.append(nn.Conv2d(hidden, 1, 1))

    def initialize_biases(self, prior_prob: float = 1e-2) -> None:
        bias = -torch.log(torch.tensor((1 - prior_prob) / prior_prob)).item()
        for pred in list(self.cls_preds) + list(self.obj_preds):
            nn.init.constant_(pred.bias, bias)

    def forward(self, features) -> torch.Tensor:
        outputs = []
        for level, x in enumerate(features):
            x = self.stems[level](x)
            cls_out = self.cls_preds[level](self.cls_convs[level](x))
            reg_feat = self.reg_convs[level](x)
            reg_out = self.reg_preds[level](reg_feat)
            obj_out = self.obj_preds[level](reg_feat)
            outputs.append(torch.cat([reg_out, obj_out.sigmoid(), cls_out.sigmoid()], 1))
        flat = torch.cat([out.flatten(start_dim=2) for out in outputs], dim=2).permute(0, 2, 1)
        if not self.decode:
            return flat
        first_h, first_w = outputs[0].shape[-2:]
        return decode_predictions(flat, (int(first_h) * STRIDES[0], int(first_w) * STRIDES[0]))


@functools.lru_cache(maxsize=32)
def anchor_grids(
    input_size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor-point grid (1, anchors, 2) and stride (1, anchors, 1) for an input size, cached on the device.

    YOLOX rebuilds these on the CPU in every call, which breaks CUDA-graph capture.
    """
    grids, strides = [], []
    for stride in STRIDES:
        h, w = input_size[0] // stride, input_size[1] // stride
        yv, xv = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grids.append(torch.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(torch.full((h * w, 1), stride))
    return (
        torch.cat(grids).to(device=device, dtype=dtype).unsqueeze(0),
        torch.cat(strides).to(device=device, dtype=dtype).unsqueeze(0),
    )


def decode_predictions(
    raw: torch.Tensor, input_size: tuple[int, int], grids: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Raw head output (B, anchors, 5 + classes) -> centre/size in input pixels, scores untouched.

    ``grids``: ``anchor_grids()`` held by the caller, e.g. as buffers of a module that torch.compile traces.
    """
    if grids is not None:
        grids, strides = grids
    elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        grids, strides = anchor_grids.__wrapped__(input_size, raw.dtype, raw.device)  # constants in the graph
    else:
        grids, strides = anchor_grids(input_size, raw.dtype, raw.device)
    xy = (raw[..., :2] + grids) * strides
    wh = torch.exp(raw[..., 2:4]) * strides
    return torch.cat([xy, wh, raw[..., 4:]], dim=-1)


class YOLOX(nn.Module):
    def __init__(self, size: ModelSize, num_classes: int):
        super().__init__()
        self.size = size
        self.num_classes = num_classes
        self.backbone = YOLOPAFPN(size.depth, size.width, size.depthwise)
        self.head = YOLOXHead(num_classes, size.width, size.depthwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_yolox(size_name: str, num_classes: int) -> YOLOX:
    """YOLOX with YOLOX's standard initialisation (BN eps/momentum, prior-probability head biases)."""
    model = YOLOX(MODEL_SIZES[size_name], num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
            module.momentum = 0.03
    model.head.initialize_biases(1e-2)
    return model
