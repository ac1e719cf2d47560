"""ShuffleNet v1 (Zhang et al., CVPR 2018) and v2 (Ma et al., ECCV 2018): grouped 1×1 convs / channel split,
mixed by a channel shuffle (unflatten–transpose–flatten, static group count)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ChannelShuffle, ClassifierHead, ConvBNAct, init_weights
from ..registry import register_variants


class ShuffleV1Unit(nn.Module):
    """1×1 group conv → shuffle → 3×3 depthwise (stride) → 1×1 group conv; add (s1) or concat with 3×3 avg-pool (s2)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, stride: int, first_group: int):
        super().__init__()
        self.stride = stride
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        mid = out_ch // 4
        self.gconv1 = ConvBNAct(in_ch, mid, 1, groups=first_group, act="relu")
        self.shuffle = ChannelShuffle(first_group) if first_group > 1 else nn.Identity()
        self.dw = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.gconv2 = ConvBNAct(mid, branch_out, 1, groups=groups, act=None)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False) if stride == 2 else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gconv2(self.dw(self.shuffle(self.gconv1(x))))
        if self.stride == 2:
            # ReLU on each branch, not on the concat: the same function, but the ReLU fuses into gconv2 (and
            # the pool's depthwise form) — a ReLU after CONCATENATION was an int8 op TFLite's XNNPACK
            # delegate does not take (1.1 of 4.8 ms in ShuffleNet v1 g3, run by the reference kernel)
            return torch.cat([self.act(self.pool(x)), self.act(y)], dim=1)
        return self.act(x + y)


class ShuffleNetV1(nn.Module):
    # output channels of stages 2-4 for 1.0×, by group count (paper, Table 1)
    CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                8: (384, 768, 1536)}

    def __init__(self, groups: int = 3, num_classes: int = 1000, repeats=(4, 8, 4), dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 24, 3, 2, act="relu"), nn.MaxPool2d(3, 2, 1))
        prev, stages = 24, []
        for s, (out, n) in enumerate(zip(self.CHANNELS[groups], repeats)):
            units = []
            for i in range(n):
                # the very first 1×1 sees only 24 stem channels: not grouped (paper, sec. 3.3)
                units.append(ShuffleV1Unit(prev, out, groups, 2 if i == 0 else 1,
                                           1 if s == 0 and i == 0 else groups))
                prev = out
            stages.append(nn.Sequential(*units))
        self.blocks = nn.Sequential(*stages)
        self.head = ClassifierHead(prev, num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ShuffleV2Unit(nn.Module):
    """Stride 1: split channels in half, transform one half; stride 2: both branches see all channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        b_in = in_ch if stride == 2 else in_ch // 2
        self.split = [in_ch // 2, in_ch - in_ch // 2]
        if stride == 2:
            self.branch1 = nn.Sequential(ConvBNAct(in_ch, in_ch, 3, 2, groups=in_ch, act=None),
                                         ConvBNAct(in_ch, half, 1, act="relu"))
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(ConvBNAct(b_in, half, 1, act="relu"),
                                     ConvBNAct(half, half, 3, stride, groups=half, act=None),
                                     ConvBNAct(half, half, 1, act="relu"))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # two slices, not torch.split: ExecuTorch's XNNPACK partitioner leaves split_with_sizes_copy
            # outside the delegate (ShuffleNet v2 0.5×: 14 partitions → 1); TFLite gets the same SLICE ops
            a, b = x[:, :self.split[0]], x[:, self.split[0]:]
            out = torch.cat([a, self.branch2(b)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
                2.0: (244, 488, 976, 2048)}

    def __init__(self, width: float = 1.0, num_classes: int = 1000, repeats=(4, 8, 4), dropout: float = 0.0):
        super().__init__()
        *stage_ch, final = self.CHANNELS[width]
        self.stem = nn.Sequential(ConvBNAct(3, 24, 3, 2, act="relu"), nn.MaxPool2d(3, 2, 1))
        prev, stages = 24, []
        for out, n in zip(stage_ch, repeats):
            stages.append(nn.Sequential(*[ShuffleV2Unit(prev if i == 0 else out, out, 2 if i == 0 else 1)
                                          for i in range(n)]))
            prev = out
        stages.append(ConvBNAct(prev, final, 1, act="relu"))
        self.blocks = nn.Sequential(*stages)
        self.head = ClassifierHead(final, num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


_V1 = dict(family="ShuffleNetV1", year=2018, resolution=224, paper="ShuffleNet: An Extremely Efficient "
           "Convolutional Neural Network for Mobile Devices (Zhang et al., CVPR 2018)")
_NOPARAMS = "the paper reports complexity and error only, no parameter count"
register_variants({
    "shufflenet_v1_g3": dict(params_m=None, macs_m=140, top1=67.4, note=_NOPARAMS, kwargs=dict(groups=3)),
    "shufflenet_v1_g8": dict(params_m=None, macs_m=140, top1=67.6, note=_NOPARAMS, kwargs=dict(groups=8)),
}, ShuffleNetV1, **_V1)

_V2 = dict(family="ShuffleNetV2", year=2018, resolution=224, paper="ShuffleNet V2: Practical Guidelines for "
           "Efficient CNN Architecture Design (Ma et al., ECCV 2018)")
register_variants({
    "shufflenet_v2_050": dict(params_m=1.4, macs_m=41, top1=60.3, kwargs=dict(width=0.5)),
    "shufflenet_v2_100": dict(params_m=2.3, macs_m=146, top1=69.4, kwargs=dict(width=1.0)),
    "shufflenet_v2_150": dict(params_m=3.5, macs_m=299, top1=72.6, kwargs=dict(width=1.5)),
    "shufflenet_v2_200": dict(params_m=7.4, macs_m=591, top1=74.9, kwargs=dict(width=2.0)),
}, ShuffleNetV2, **_V2)
