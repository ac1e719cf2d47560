"""SqueezeNet 1.0/1.1 (Iandola et al., 2016) and SqueezeNeXt (Gholami et al., CVPR-W 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvBNAct, init_weights
from ..registry import register_variants


class Fire(nn.Module):
    """squeeze 1×1 → (expand 1×1 ‖ expand 3×3), ReLU after each, concatenated."""

    def __init__(self, in_ch: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_ch, squeeze, 1), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


# (squeeze, expand) per fire module; "M" = 3×3/2 max-pool
_FIRES = {
    "1_0": [(16, 64), (16, 64), (32, 128), "M", (32, 128), (48, 192), (48, 192), (64, 256), "M", (64, 256)],
    "1_1": [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)],
}


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        stem_k, stem_ch = (7, 96) if version == "1_0" else (3, 64)
        # floor-mode pooling (the Caffe original rounds up): no implicit padding for the runtimes
        layers: list[nn.Module] = [nn.Conv2d(3, stem_ch, stem_k, 2), nn.ReLU(), nn.MaxPool2d(3, 2)]
        prev = stem_ch
        for f in _FIRES[version]:
            if f == "M":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                layers.append(Fire(prev, *f))
                prev = 2 * f[1]
        self.features = nn.Sequential(*layers)
        # the classifier is a 1×1 conv to num_classes, ReLU, global average pool (no fully connected layer)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(prev, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SqNxtBlock(nn.Module):
    """1×1 → 1×1 (half of that) → 1×3 → 3×1 → 1×1 (out), BN + ReLU after each, residual (reference design).

    The first 1×1 reduces by 1 (stride-2 blocks), 4 (channel-reducing blocks) or 2, and carries the stride."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        den = 1 if stride == 2 else (4 if in_ch > out_ch else 2)
        r = in_ch // den
        self.body = nn.Sequential(
            ConvBNAct(in_ch, r, 1, stride, act="relu", bias=True),
            ConvBNAct(r, r // 2, 1, act="relu", bias=True),
            ConvBNAct(r // 2, r, (1, 3), act="relu", bias=True),
            ConvBNAct(r, r, (3, 1), act="relu", bias=True),
            ConvBNAct(r, out_ch, 1, act="relu", bias=True))
        self.shortcut = (ConvBNAct(in_ch, out_ch, 1, stride, act="relu", bias=True)
                         if stride == 2 or in_ch > out_ch else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SqueezeNeXt(nn.Module):
    """SqNxt-23 (blocks 6/6/8/1) and 23v5 (2/4/14/1), width × {32, 64, 128, 256} (paper, Fig. 4 / Table 2)."""

    DEPTHS = {"23": (6, 6, 8, 1), "23v5": (2, 4, 14, 1)}

    def __init__(self, width: float = 1.0, depth: str = "23", num_classes: int = 1000):
        super().__init__()
        ch = [int(c * width) for c in (32, 64, 128, 256)]
        stem = int(64 * width)
        self.stem = nn.Sequential(ConvBNAct(3, stem, 7, 2, act="relu", bias=True), nn.MaxPool2d(3, 2, 1))
        prev, stages = stem, []
        for s, (out, n) in enumerate(zip(ch, self.DEPTHS[depth])):
            blocks = []
            for i in range(n):
                blocks.append(SqNxtBlock(prev, out, 2 if (i == 0 and s > 0) else 1))
                prev = out
            stages.append(nn.Sequential(*blocks))
        stages.append(ConvBNAct(prev, int(128 * width), 1, act="relu", bias=True))
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(int(128 * width), num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


register_variants({
    "squeezenet_1_0": dict(params_m=1.25, macs_m=None, top1=57.5, kwargs=dict(version="1_0"),
                           note="the paper gives no MAC count"),
    "squeezenet_1_1": dict(params_m=1.24, macs_m=None, top1=58.2, kwargs=dict(version="1_1"),
                           note="SqueezeNet 1.1 is from the authors' release notes, no paper MAC count"),
}, SqueezeNet, family="SqueezeNet", year=2016, resolution=224,
    paper="SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size (Iandola et al., 2016)")

register_variants({
    "squeezenext_23_100": dict(params_m=0.72, macs_m=282, top1=59.05,
                               note="stem pads 3 (symmetric k//2) where the reference pads 1: +7% MACs", kwargs=dict(width=1.0, depth="23")),
    "squeezenext_23v5_100": dict(params_m=0.94, macs_m=228, top1=59.24, kwargs=dict(width=1.0, depth="23v5"),
                                 note="params agree; the reference layout built here counts ~307 M MACs — the "
                                      "paper's 228 M for v5 could not be reproduced from its published design"),
}, SqueezeNeXt, family="SqueezeNeXt", year=2018, resolution=227,
    paper="SqueezeNext: Hardware-Aware Neural Network Design (Gholami et al., CVPR Workshops 2018)")
