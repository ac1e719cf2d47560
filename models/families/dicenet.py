"""DiCENet (Mehta et al., TPAMI 2021): the DiCE unit convolves along each dimension of the tensor — depth
(a depthwise conv), height and width (depthwise convs on the tensor transposed so that rows / columns are the
"channels") — then fuses the three (grouped 1×1) and re-weights globally. ShuffleNetV2-like macro layout.

The height/width-wise convs have one filter per row/column, so a built model is tied to its input size
(`resolution`, default 224; the factory builds any multiple of 32). The authors' code resamples other sizes
inside every unit; we build for the size instead, keeping the graph free of shape-dependent branches."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import channel_shuffle, init_weights
from ..registry import register_variants

# channels per level (stem, level 2, levels 3-5, classifier) by scale s, and blocks per level (authors' release)
SCALES = {0.2: (16, 16, 32, 64, 128, 1024), 0.5: (24, 24, 48, 96, 192, 1024), 0.75: (24, 24, 86, 172, 344, 1024),
          1.0: (24, 24, 116, 232, 464, 1024), 1.25: (24, 24, 144, 288, 576, 1024),
          1.5: (24, 24, 176, 352, 704, 1024), 1.75: (24, 24, 210, 420, 840, 1024),
          2.0: (24, 24, 244, 488, 976, 1024), 2.4: (24, 24, 278, 556, 1112, 1280)}
REPEATS = (3, 7, 3)


def cbr(in_ch: int, out_ch: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv → BN → PReLU (the authors' CBR)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.PReLU(out_ch))


class DiCE(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, height: int, width: int, k: int = 3):
        super().__init__()
        self.conv_channel = nn.Conv2d(in_ch, in_ch, k, padding=k // 2, groups=in_ch, bias=False)
        self.conv_height = nn.Conv2d(height, height, k, padding=k // 2, groups=height, bias=False)
        self.conv_width = nn.Conv2d(width, width, k, padding=k // 2, groups=width, bias=False)
        self.br = nn.Sequential(nn.BatchNorm2d(3 * in_ch), nn.PReLU(3 * in_ch))
        self.fuse = cbr(3 * in_ch, in_ch, 1, groups=in_ch)               # local fusion: 3 → 1 per channel
        self.proj = cbr(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))
        self.weights = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, in_ch // 4, 1, bias=False), nn.ReLU(),
                                     nn.Conv2d(in_ch // 4, out_ch, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.conv_channel(x)
        h = self.conv_height(x.transpose(1, 2)).transpose(1, 2)          # rows as channels
        w = self.conv_width(x.transpose(1, 3)).transpose(1, 3)           # columns as channels
        y = self.fuse(channel_shuffle(self.br(torch.cat([d, h, w], dim=1)), 3))
        return self.proj(y) * self.weights(y)


class StridedDiCE(nn.Module):
    """Downsampling unit: (depthwise 3×3/2 → 1×1) ‖ (avg-pool 3×3/2 → DiCE → 1×1), concat, shuffle → 2C."""

    def __init__(self, ch: int, height: int, width: int):
        super().__init__()
        self.left = nn.Sequential(cbr(ch, ch, 3, 2, groups=ch), cbr(ch, ch, 1))
        self.right = nn.Sequential(nn.AvgPool2d(3, 2, 1), DiCE(ch, ch, height, width), cbr(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class ShuffleDiCEBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, height: int, width: int):
        super().__init__()
        left = round(0.5 * in_ch)
        self.split = [left, in_ch - left]
        self.right = nn.Sequential(cbr(in_ch - left, out_ch - left, 1), DiCE(out_ch - left, out_ch - left, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two slices, not torch.split: ExecuTorch's XNNPACK partitioner leaves split_with_sizes_copy outside
        a, b = x[:, :self.split[0]], x[:, self.split[0]:]
        return channel_shuffle(torch.cat([a, self.right(b)], dim=1), 2)


class DiCENet(nn.Module):
    def __init__(self, s: float = 1.0, num_classes: int = 1000, resolution: int = 224):
        super().__init__()
        if resolution % 32:
            raise ValueError("DiCENet needs an input size divisible by 32")
        ch = SCALES[s]
        self.stem = nn.Sequential(cbr(3, ch[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        size, levels = resolution // 4, []
        prev = ch[1]
        for lvl, n in enumerate(REPEATS):
            size //= 2
            out = ch[2 + lvl]
            blocks = [StridedDiCE(prev, size, size)]
            blocks += [ShuffleDiCEBlock(2 * prev if i == 0 else out, out, size, size) for i in range(n)]
            levels.append(nn.Sequential(*blocks))
            prev = out
        self.blocks = nn.Sequential(*levels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # grouped linear (4 groups) then the classifier, both as 1×1 convs (authors' head)
        self.classifier = nn.Sequential(nn.Conv2d(prev, ch[5], 1, groups=4, bias=False),
                                        nn.Dropout(0.2 if s > 1 else 0.1), nn.Conv2d(ch[5], num_classes, 1),
                                        nn.Flatten(1))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


_NOTE = ("paper numbers for this scale are not recorded here; counts are of the authors' released definition "
         "at 224×224")
register_variants({
    "dicenet_050": dict(params_m=None, macs_m=None, top1=None, note=_NOTE, kwargs=dict(s=0.5)),
    "dicenet_100": dict(params_m=None, macs_m=None, top1=None, note=_NOTE, kwargs=dict(s=1.0)),
    "dicenet_240": dict(params_m=None, macs_m=None, top1=None, note=_NOTE, kwargs=dict(s=2.4)),
}, DiCENet, family="DiCENet", year=2021, resolution=224, tags=("input-size-bound",),
    paper="DiCENet: Dimension-wise Convolutions for Efficient Networks (Mehta et al., TPAMI 2021)")
