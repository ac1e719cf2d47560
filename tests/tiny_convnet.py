"""A tiny MobileNet-like net for converter/quantization tests: every op kind the zoo uses, seconds to convert.

stem conv (stride 2) + BN + hard-swish → inverted residual with depthwise conv, squeeze-excite (hard-sigmoid
gate), residual add → 1×1 conv + ReLU6 → global average pool → linear. Random weights, then BatchNorm
statistics re-estimated on random images so activations have realistic ranges (plain random init gives
exploding or vanishing activations, which makes int8 fidelity meaningless).
"""

from __future__ import annotations

import torch
from torch import nn

from lwdeploy.models.registry import ModelInfo

RES = 32
CLASSES = 10
INFO = ModelInfo(name="tiny_convnet", family="test", year=2026, paper="-", resolution=RES, params_m=0.0,
                 macs_m=0.0, top1=None, num_classes=CLASSES)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.expand = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.se = SqueezeExcite(32)
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        # keepdim + flatten, as the zoo's AdaptiveAvgPool2d heads do: a rank-reducing mean is not delegated
        # by XNNPACK in ExecuTorch and costs a layout TRANSPOSE in TFLite
        x = self.head(x).mean((2, 3), keepdim=True).flatten(1)
        return self.classifier(x)


def build(seed: int = 0) -> TinyConvNet:
    torch.manual_seed(seed)
    model = TinyConvNet()
    recalibrate_batchnorm(model, RES)
    return model.eval()


def recalibrate_batchnorm(model: nn.Module, res: int, batches: int = 4) -> None:
    """BatchNorm statistics from random images, with the pipeline's own stage (lwdeploy.pipeline)."""
    from lwdeploy.pipeline import settle_batchnorm

    settle_batchnorm(model, torch.randn(16 * batches, 3, res, res), limit=16 * batches)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, RES, RES, generator=g)
