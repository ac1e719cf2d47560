"""GhostNet (Han et al., CVPR 2020): half the channels from a 1×1 conv, the other half from cheap depthwise ops."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import ClassifierHead, ConvBNAct, SqueezeExcite, init_weights, make_divisible
from ..registry import register_variants

# kernel, expanded channels, out channels, SE ratio, stride — one row per bottleneck (paper, Table 1)
GHOSTNET_CFG = [
    [(3, 16, 16, 0, 1)],
    [(3, 48, 24, 0, 2)],
    [(3, 72, 24, 0, 1)],
    [(5, 72, 40, 0.25, 2)],
    [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0, 2)],
    [(3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)],
]


class GhostModule(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, ratio: int = 2, dw_kernel: int = 3, relu: bool = True):
        super().__init__()
        self.out_ch = out_ch
        init_ch = math.ceil(out_ch / ratio)
        act = "relu" if relu else None
        self.primary = ConvBNAct(in_ch, init_ch, 1, act=act)
        self.cheap = ConvBNAct(init_ch, init_ch * (ratio - 1), dw_kernel, groups=init_ch, act=act)
        # Slice only when the concat overshoots: a no-op slice exports as aten.alias / extra copies that
        # break Core ML conversion and XNNPACK partitioning.
        self.needs_slice = init_ch * ratio != out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        out = torch.cat([a, self.cheap(a)], dim=1)
        return out[:, : self.out_ch] if self.needs_slice else out


class GhostBottleneck(nn.Module):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int, se_ratio: float):
        super().__init__()
        self.ghost1 = GhostModule(in_ch, mid_ch, relu=True)
        self.dw = ConvBNAct(mid_ch, mid_ch, kernel, stride, groups=mid_ch, act=None) if stride > 1 else nn.Identity()
        self.se = (SqueezeExcite(mid_ch, make_divisible(mid_ch * se_ratio, 4), "relu", "hsigmoid")
                   if se_ratio else nn.Identity())
        self.ghost2 = GhostModule(mid_ch, out_ch, relu=False)
        if in_ch == out_ch and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, act=None),
                                          ConvBNAct(in_ch, out_ch, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.dw(self.ghost1(x)))) + self.shortcut(x)


class GhostNet(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        prev = make_divisible(16 * width, 4)
        self.stem = ConvBNAct(3, prev, 3, 2, act="relu")
        stages = []
        for stage in GHOSTNET_CFG:
            layers = []
            for k, exp, c, se, s in stage:
                out, mid = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                layers.append(GhostBottleneck(prev, mid, out, k, s, se))
                prev = out
            stages.append(nn.Sequential(*layers))
        final = make_divisible(960 * width, 4)
        stages.append(ConvBNAct(prev, final, 1, act="relu"))
        self.blocks = nn.Sequential(*stages)
        self.head = ClassifierHead(final, num_classes, 1280, "relu", head_bias=True, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


register_variants({
    "ghostnet_100": dict(params_m=5.2, macs_m=141, top1=73.9, kwargs=dict(width=1.0)),
}, GhostNet, family="GhostNet", year=2020, resolution=224,
    paper="GhostNet: More Features from Cheap Operations (Han et al., CVPR 2020)")
