"""SE-ResNet-50 (Hu et al., CVPR 2018): ResNet-50 bottlenecks with squeeze-excite (r=16) before the add.
SE-MobileNet lives with MobileNetV1 (families/mobilenet.py)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ClassifierHead, ConvBNAct, SqueezeExcite, init_weights
from ..registry import register_variants


class SEBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, reduction: int = 16):
        super().__init__()
        out = width * self.expansion
        # stride on the first 1×1, as in the authors' Caffe models (this is what their 3.87 GFLOPs counts)
        self.conv1 = ConvBNAct(in_ch, width, 1, stride, act="relu")
        self.conv2 = ConvBNAct(width, width, 3, act="relu")
        self.conv3 = ConvBNAct(width, out, 1, act=None)
        self.se = SqueezeExcite(out, out // reduction, "relu", "sigmoid")
        self.shortcut = ConvBNAct(in_ch, out, 1, stride, act=None) if stride != 1 or in_ch != out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.conv3(self.conv2(self.conv1(x)))) + self.shortcut(x))


class SEResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 64, 7, 2, act="relu"), nn.MaxPool2d(3, 2, 1))
        prev, stages = 64, []
        for s, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for i in range(n):
                blocks.append(SEBottleneck(prev, width, 2 if (i == 0 and s > 0) else 1))
                prev = width * SEBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.head = ClassifierHead(prev, num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


register_variants({
    "se_resnet50": dict(params_m=28.1, macs_m=3870, top1=76.7, kwargs=dict(layers=(3, 4, 6, 3))),
}, SEResNet, family="SENet", year=2018, resolution=224,
    paper="Squeeze-and-Excitation Networks (Hu et al., CVPR 2018)")
