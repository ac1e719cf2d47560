"""Shared building blocks of the lightweight families.

Every architecture in the zoo is assembled from these, so a rewrite for a runtime (see
lwdeploy.quantization.lowering) touches one class, not twenty model files. Activations are modules,
never functional calls hidden in a forward(), so lowering and pruning can find and replace them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6 — the form int8 kernels run (a clamp and a scale), not x*0.1667+0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(x + 3.0) / 6.0


class HardSwish(nn.Module):
    """x * relu6(x + 3) / 6, written out so every runtime sees ops it can run in int8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.nn.functional.relu6(x + 3.0) / 6.0)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=False),
    "relu6": lambda: nn.ReLU6(inplace=False),
    "hswish": HardSwish,
    "hsigmoid": HardSigmoid,
    "swish": Swish,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
    None: nn.Identity,
}


def make_activation(name: str | None) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(k for k in _ACTIVATIONS if k)}") from None


class ConvBNAct(nn.Sequential):
    """Conv2d → BatchNorm → activation, padding symmetric (k//2) so no explicit PAD op is ever exported."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int] = 3, stride: int = 1, groups: int = 1,
                 act: str | None = "relu6", dilation: int = 1, bias: bool = False):
        # a (kh, kw) kernel (SqueezeNeXt's 3×1 / 1×3) pads each axis symmetrically on its own
        padding = ((kernel[0] - 1) // 2 * dilation, (kernel[1] - 1) // 2 * dilation) if isinstance(kernel, tuple) \
            else (kernel - 1) // 2 * dilation
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = make_activation(act)
        self.in_channels, self.out_channels = in_ch, out_ch


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018). Gate is hard-sigmoid by default (MobileNetV3)."""

    def __init__(self, channels: int, reduced: int, act: str = "relu", gate: str = "hsigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = make_activation(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * s


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k → (SE) → pointwise 1×1 (MobileNetV1 block; the first block of the MBConv families)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, act: str = "relu6",
                 se_channels: int = 0, se_gate: str = "hsigmoid", se_act: str = "relu", pw_act: bool = False,
                 skip: bool = True, se_after: bool = False):
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, act=act)
        # SE between dw and pw (MBConv families), or on the block output (SE-MobileNet, SENet paper)
        self.se = SqueezeExcite(in_ch, se_channels, se_act, se_gate) if se_channels and not se_after else nn.Identity()
        self.pw = ConvBNAct(in_ch, out_ch, 1, act=act if pw_act else None)
        self.se_out = SqueezeExcite(out_ch, se_channels, se_act, se_gate) if se_channels and se_after else nn.Identity()
        self.has_skip = skip and stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se_out(self.pw(self.se(self.dw(x))))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """MBConv: 1×1 expand → k×k depthwise → (SE) → 1×1 linear project, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, mid_ch: int | None = None,
                 act: str = "relu6", se_channels: int = 0, se_gate: str = "hsigmoid", se_act: str = "relu",
                 expand_groups: int = 1, project_groups: int = 1, skip: bool = True):
        super().__init__()
        mid_ch = mid_ch or in_ch
        # grouped 1×1 expand/project: MixNet's a1.1/p1.1 (two equal channel groups)
        self.expand = ConvBNAct(in_ch, mid_ch, 1, groups=expand_groups, act=act) if mid_ch != in_ch else nn.Identity()
        self.dw = ConvBNAct(mid_ch, mid_ch, kernel, stride, groups=mid_ch, act=act)
        self.se = SqueezeExcite(mid_ch, se_channels, se_act, se_gate) if se_channels else nn.Identity()
        self.project = ConvBNAct(mid_ch, out_ch, 1, groups=project_groups, act=None)
        self.has_skip = skip and stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.has_skip else y


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2): one k×k expand conv replaces expand 1×1 + depthwise."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, mid_ch: int | None = None,
                 act: str = "swish", se_channels: int = 0, se_gate: str = "sigmoid", se_act: str = "swish"):
        super().__init__()
        mid_ch = mid_ch or in_ch
        # expansion 1: the k×k conv maps straight to out_ch and there is no projection (paper, Table 4)
        expands = mid_ch != in_ch
        self.conv = ConvBNAct(in_ch, mid_ch if expands else out_ch, kernel, stride, act=act)
        self.se = SqueezeExcite(mid_ch, se_channels, se_act, se_gate) if se_channels and expands else nn.Identity()
        self.project = ConvBNAct(mid_ch, out_ch, 1, act=None) if expands else nn.Identity()
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.conv(x)))
        return x + y if self.has_skip else y


class ClassifierHead(nn.Module):
    """(1×1 conv head + act) and global average pool → dropout → linear.

    `pool_first` picks where the head conv sits: MobileNetV3/GhostNet pool first and run the wide conv on a
    1×1 map (cheap); MobileNetV2/EfficientNet run it on the final feature map, then pool. The two are not
    interchangeable (the activation sits between), so pretrained weights need the right one.
    """

    def __init__(self, in_ch: int, num_classes: int, head_ch: int = 0, head_act: str = "relu6",
                 head_bias: bool = True, head_bn: bool = False, dropout: float = 0.2, pool_first: bool = True):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_first = pool_first
        if head_ch:
            self.conv = nn.Conv2d(in_ch, head_ch, 1, bias=head_bias)
            self.bn = nn.BatchNorm2d(head_ch) if head_bn else nn.Identity()
            self.act = make_activation(head_act)
            in_ch = head_ch
        else:
            self.conv = self.bn = self.act = nn.Identity()
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            x = self.act(self.bn(self.conv(self.pool(x))))
        else:
            x = self.pool(self.act(self.bn(self.conv(x))))
        return self.fc(self.dropout(self.flatten(x)))


def multi_head_attention(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v per head, for (B, N, 3·C) projected tokens → (B, N, C), written with 3-D batched
    matmuls over B·heads. A 4-D `@` is decomposed by ExecuTorch into expand_copy / squeeze_copy around a bmm,
    which its XNNPACK partitioner does not take (EdgeViT-XXS: 2 graph breaks per attention), and unbind into a
    select + squeeze_copy, another one."""
    b, c = qkv.shape[0], qkv.shape[-1] // 3

    def split_heads(t: torch.Tensor) -> torch.Tensor:       # (B, N, C) → (B·heads, N, d)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2).flatten(0, 1)

    # slices, not unbind/chunk: those become select/squeeze or split copies that the partitioner leaves out
    q, k, v = (split_heads(qkv[..., i * c:(i + 1) * c]) for i in range(3))
    attn = torch.bmm(q * scale, k.transpose(1, 2)).softmax(dim=-1)
    return torch.bmm(attn, v).unflatten(0, (b, heads)).transpose(1, 2).flatten(2)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle as unflatten/transpose/flatten: no shape is read from the tensor, so it
    exports with static sizes and converts to one reshape-transpose-reshape on every runtime."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


def init_weights(model: nn.Module) -> nn.Module:
    """He init for convs, small normal for linears: random-weight models give non-degenerate outputs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model
