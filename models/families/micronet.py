"""MicroNet M0–M3 (Li et al., ICCV 2021): Micro-Factorized convolution (group 1×1 convs with shuffles,
k×1 + 1×k depthwise) and the Dynamic Shift-Max activation. Stage tables are the authors' release
(`msnx_*_cfgs`); the channel shift is a fixed index gather (buffer), everything else is static."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import HardSigmoid, HardSwish, SqueezeExcite, channel_shuffle, init_weights, make_divisible
from ..registry import register_variants

# s, n, c, ks, c1, c2, g1, g2, c3, g3, g4, y1, y2, y3, r  (authors' column names)
M0 = [[2, 1, 8, 3, 2, 2, 0, 4, 8, 2, 2, 2, 0, 1, 1], [2, 1, 12, 3, 2, 2, 0, 8, 12, 4, 4, 2, 2, 1, 1],
      [2, 1, 16, 5, 2, 2, 0, 12, 16, 4, 4, 2, 2, 1, 1], [1, 1, 32, 5, 1, 4, 4, 4, 32, 4, 4, 2, 2, 1, 1],
      [2, 1, 64, 5, 1, 4, 8, 8, 64, 8, 8, 2, 2, 1, 1], [1, 1, 96, 3, 1, 4, 8, 8, 96, 8, 8, 2, 2, 1, 2],
      [1, 1, 384, 3, 1, 4, 12, 12, 0, 0, 0, 2, 2, 1, 2]]
M1 = [[2, 1, 8, 3, 2, 2, 0, 6, 8, 2, 2, 2, 0, 1, 1], [2, 1, 16, 3, 2, 2, 0, 8, 16, 4, 4, 2, 2, 1, 1],
      [2, 1, 16, 5, 2, 2, 0, 16, 16, 4, 4, 2, 2, 1, 1], [1, 1, 32, 5, 1, 6, 4, 4, 32, 4, 4, 2, 2, 1, 1],
      [2, 1, 64, 5, 1, 6, 8, 8, 64, 8, 8, 2, 2, 1, 1], [1, 1, 96, 3, 1, 6, 8, 8, 96, 8, 8, 2, 2, 1, 2],
      [1, 1, 576, 3, 1, 6, 12, 12, 0, 0, 0, 2, 2, 1, 2]]
M2 = [[2, 1, 12, 3, 2, 2, 0, 8, 12, 4, 4, 2, 0, 1, 1], [2, 1, 16, 3, 2, 2, 0, 12, 16, 4, 4, 2, 2, 1, 1],
      [1, 1, 24, 3, 2, 2, 0, 16, 24, 4, 4, 2, 2, 1, 1], [2, 1, 32, 5, 1, 6, 6, 6, 32, 4, 4, 2, 2, 1, 1],
      [1, 1, 32, 5, 1, 6, 8, 8, 32, 4, 4, 2, 2, 1, 2], [1, 1, 64, 5, 1, 6, 8, 8, 64, 8, 8, 2, 2, 1, 2],
      [2, 1, 96, 5, 1, 6, 8, 8, 96, 8, 8, 2, 2, 1, 2], [1, 1, 128, 3, 1, 6, 12, 12, 128, 8, 8, 2, 2, 1, 2],
      [1, 1, 768, 3, 1, 6, 16, 16, 0, 0, 0, 2, 2, 1, 2]]
M3 = [[2, 1, 16, 3, 2, 2, 0, 12, 16, 4, 4, 0, 2, 0, 1], [2, 1, 24, 3, 2, 2, 0, 16, 24, 4, 4, 0, 2, 0, 1],
      [1, 1, 24, 3, 2, 2, 0, 24, 24, 4, 4, 0, 2, 0, 1], [2, 1, 32, 5, 1, 6, 6, 6, 32, 4, 4, 0, 2, 0, 1],
      [1, 1, 32, 5, 1, 6, 8, 8, 32, 4, 4, 0, 2, 0, 2], [1, 1, 64, 5, 1, 6, 8, 8, 48, 8, 8, 0, 2, 0, 2],
      [1, 1, 80, 5, 1, 6, 8, 8, 80, 8, 8, 0, 2, 0, 2], [1, 1, 80, 5, 1, 6, 10, 10, 80, 8, 8, 0, 2, 0, 2],
      [2, 1, 120, 5, 1, 6, 10, 10, 120, 10, 10, 0, 2, 0, 2], [1, 1, 120, 5, 1, 6, 12, 12, 120, 10, 10, 0, 2, 0, 2],
      [1, 1, 144, 3, 1, 6, 12, 12, 144, 12, 12, 0, 2, 0, 2], [1, 1, 864, 3, 1, 6, 12, 12, 0, 0, 0, 0, 2, 0, 2]]

# stage table, stem channels, stem groups, classifier width, dropout, init_a, init_b
MICRONET = {"m0": (M0, 4, (2, 2), 640, 0.05, (1.0, 1.0), (0.0, 0.0)),
            "m1": (M1, 6, (3, 2), 960, 0.05, (1.0, 1.0), (0.0, 0.0)),
            "m2": (M2, 8, (4, 2), 1024, 0.1, (1.0, 1.0), (0.0, 0.0)),
            "m3": (M3, 12, (4, 3), 1024, 0.1, (1.0, 0.5), (0.0, 0.5))}


class Shuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


def shuffle(groups: int, channels: int) -> nn.Module:
    # shuffles with 1 or C groups are the identity: leave them out of the graph
    return Shuffle(groups) if 1 < groups < channels else nn.Identity()


class DYShiftMax(nn.Module):
    """max over two of (a·x + b·shift(x)) (or one, `two=False`), a/b per channel from a squeeze MLP.
    shift(x) moves every channel to the next group and the next slot in it: a fixed index gather."""

    def __init__(self, ch: int, reduction: int, groups: int, two: bool, init_a, init_b, expansion: bool = False):
        super().__init__()
        self.k = 4 if two else 2
        self.ch, self.init_a, self.init_b = ch, tuple(init_a), tuple(init_b)
        squeeze = max(4, make_divisible(ch // reduction, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(ch, squeeze), nn.ReLU(), nn.Linear(squeeze, ch * self.k), HardSigmoid())
        g = ch // groups if (groups != 1 and expansion) else groups
        gc = ch // g
        idx = torch.arange(ch).view(g, gc)
        idx = torch.cat([idx[1:], idx[:1]], 0)
        idx = torch.cat([idx[:, 1:], idx[:, :1]], 1)
        self.register_buffer("index", idx.reshape(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.fc(self.pool(x).flatten(1)) - 0.5) * 4.0        # act_max 2.0, doubled (authors' code)
        y = y[:, :, None, None]
        x2 = torch.index_select(x, 1, self.index)
        # slices, not torch.split: ExecuTorch's XNNPACK partitioner leaves split_with_sizes_copy outside
        c = self.ch
        if self.k == 4:
            a1, b1, a2, b2 = y[:, :c], y[:, c:2 * c], y[:, 2 * c:3 * c], y[:, 3 * c:]
            return torch.maximum(x * (a1 + self.init_a[0]) + x2 * (b1 + self.init_b[0]),
                                 x * (a2 + self.init_a[1]) + x2 * (b2 + self.init_b[1]))
        a1, b1 = y[:, :c], y[:, c:]
        return x * (a1 + self.init_a[0]) + x2 * (b1 + self.init_b[0])


def depth_spatial_sep(ch: int, exp: tuple[int, int], k: int, stride: int) -> nn.Sequential:
    """k×1 depthwise (×exp1 channels) → 1×k depthwise (×exp2), each with BN: a factorised k×k depthwise."""
    mid, out = ch * exp[0], ch * exp[0] * exp[1]
    return nn.Sequential(nn.Conv2d(ch, mid, (k, 1), (stride, 1), (k // 2, 0), groups=ch, bias=False),
                         nn.BatchNorm2d(mid),
                         nn.Conv2d(mid, out, (1, k), (1, stride), (0, k // 2), groups=mid, bias=False),
                         nn.BatchNorm2d(out))


def group_pw(in_ch: int, out_ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, groups=groups, bias=False), nn.BatchNorm2d(out_ch))


class MicroBlock(nn.Module):
    def __init__(self, inp: int, oup: int, k: int, stride: int, exp: tuple[int, int], gs1: tuple[int, int],
                 g1: int, g2: int, dy: tuple[int, int, int], reduction: int, init_a, init_b):
        super().__init__()
        y1, y2, y3 = dy
        hidden = inp * exp[0] * exp[1]
        a3, b3 = (1.0, 0.0), (0.0, 0.0)          # INIT_A_BLOCK3 for the output activation
        self.identity = stride == 1 and inp == oup

        def act(ch, y, groups, init=(init_a, init_b), red=reduction, expansion=False):
            return (DYShiftMax(ch, red, groups, y == 2, *init, expansion=expansion) if y > 0 else nn.ReLU6())

        if gs1[0] == 0:                                       # lite: depthwise first (early, narrow layers)
            layers = [depth_spatial_sep(inp, exp, k, stride), act(hidden, y2, gs1[1]),
                      shuffle(gs1[1], hidden), shuffle(hidden // 2, hidden) if y2 else nn.Identity(),
                      group_pw(hidden, oup, g1),
                      DYShiftMax(oup, reduction // 2, g2, False, a3, b3) if y3 else nn.Identity(),
                      shuffle(g2, oup), shuffle(oup // 2, oup) if (oup % 2 == 0 and y3) else nn.Identity()]
        elif g2 == 0:                                         # last block: grouped expansion only
            layers = [group_pw(inp, hidden, gs1[0]),
                      DYShiftMax(hidden, reduction, gs1[1], False, a3, b3) if y3 else nn.Identity()]
        else:
            layers = [group_pw(inp, hidden, gs1[0]), act(hidden, y1, gs1[1]), shuffle(gs1[1], hidden),
                      depth_spatial_sep(hidden, (1, 1), k, stride),
                      act(hidden, y2, gs1[1], expansion=True),
                      (shuffle(hidden // 4, hidden) if (y1 and y2) else
                       nn.Identity() if (not y1 and not y2) else shuffle(hidden // 2, hidden)),
                      group_pw(hidden, oup, g1),
                      DYShiftMax(oup, reduction // 2 if oup < hidden else reduction, g2, False, a3, b3)
                      if y3 else nn.Identity(),
                      shuffle(g2, oup), shuffle(oup // 2, oup) if y3 else nn.Identity()]
        self.layers = nn.Sequential(*layers)
        self.se = SqueezeExcite(oup, make_divisible(oup * 0.25, 4), "relu", "hsigmoid") if self.identity \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return self.se(out) + x if self.identity else out


class SwishLinear(nn.Sequential):
    def __init__(self, inp: int, oup: int):
        super().__init__(nn.Linear(inp, oup), nn.BatchNorm1d(oup), HardSwish())


class MicroNet(nn.Module):
    def __init__(self, arch: str = "m0", num_classes: int = 1000):
        super().__init__()
        table, stem_ch, (sg1, sg2), out_ch, dropout, init_a, init_b = MICRONET[arch]
        # stem: 3×1 conv (stride 2 rows) → 1×3 depthwise (stride 2 cols), ReLU after each, then shuffle
        self.stem = nn.Sequential(
            nn.Conv2d(3, sg1, (3, 1), (2, 1), (1, 0), bias=False), nn.BatchNorm2d(sg1), nn.ReLU(),
            nn.Conv2d(sg1, sg1 * sg2, (1, 3), (1, 2), (0, 1), groups=sg1, bias=False), nn.BatchNorm2d(sg1 * sg2),
            nn.ReLU(), shuffle(sg1, sg1 * sg2))
        prev, blocks = stem_ch, []
        for s, n, c, ks, c1, c2, g1, g2, _c3, g3, g4, y1, y2, y3, r in table:
            for i in range(n):
                blocks.append(MicroBlock(prev, c, ks, s if i == 0 else 1, (c1, c2), (g1, g2), g3, g4,
                                         (y1, y2, y3), 8 * r, init_a, init_b))
                prev = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.ReLU6(), nn.AdaptiveAvgPool2d(1), HardSwish(), nn.Flatten(1))
        self.classifier = nn.Sequential(SwishLinear(prev, out_ch), nn.Dropout(dropout),
                                        SwishLinear(out_ch, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


register_variants({
    "micronet_m0": dict(params_m=1.0, macs_m=6, top1=46.6, kwargs=dict(arch="m0")),
    "micronet_m1": dict(params_m=1.8, macs_m=12, top1=51.4, kwargs=dict(arch="m1")),
    "micronet_m2": dict(params_m=2.4, macs_m=21, top1=59.4, kwargs=dict(arch="m2")),
    "micronet_m3": dict(params_m=2.6, macs_m=44, top1=62.5, kwargs=dict(arch="m3")),
}, MicroNet, family="MicroNet", year=2021, resolution=224,
    note="params agree within 2%; our conv+linear count is ~half the paper's MAdds for all four sizes — the "
         "authors' counter includes more than conv/linear multiply-adds (not specified in the paper)",
    paper="MicroNet: Improving Image Recognition with Extremely Low FLOPs (Li et al., ICCV 2021)")
