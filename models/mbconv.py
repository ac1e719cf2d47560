"""One builder for the MBConv families, driven by compact per-stage block strings (the timm idea).

A block string reads like `ir_r3_k5_s2_e6_c40_se0.25_nre`:
    type   ds (depthwise separable) | ir (inverted residual) | er (fused MBConv) | cn (conv-bn-act)
    r N    repeats              k N   kernel (k3.5.7 = mixed kernels, MixNet)
    s N    stride of the first  e X   expansion ratio
    c N    output channels      seX   squeeze-excite ratio (of the expanded channels)
    nre    use ReLU instead of the network's default activation; `hs`/`sw`/`re6` force hswish/swish/relu6
    gaN/gpN  groups of the 1×1 expand / project convs (MixNet)    noskip  no residual connection
    pwa    activation after the pointwise conv of a `ds` block (MobileNetV1)
    sea    squeeze-excite on the block output (ratio of output channels), as SENet adds it to MobileNet
MobileNetV2/V3, MNASNet, FBNet, ChamNet, MixNet, EfficientNet(-Lite/V2) and TinyNet are then just data.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from .layers import (ClassifierHead, ConvBNAct, DepthwiseSeparable, FusedMBConv, InvertedResidual,
                     init_weights, make_activation, make_divisible)


@dataclass(frozen=True)
class BlockSpec:
    kind: str
    repeats: int
    kernel: tuple[int, ...]
    stride: int
    exp: float
    out_ch: int
    se: float
    act: str | None      # None: the network default
    skip: bool = True
    expand_groups: int = 1
    project_groups: int = 1
    pw_act: bool = False
    se_after: bool = False


_ACT_FLAGS = {"nre": "relu", "hs": "hswish", "sw": "swish", "re6": "relu6"}


def decode_block(text: str) -> BlockSpec:
    kind, *opts = text.split("_")
    if kind not in ("ds", "ir", "er", "cn", "mx"):
        raise ValueError(f"unknown block type {kind!r} in {text!r}")
    vals = {"r": 1, "k": (3,), "s": 1, "e": 1.0, "c": None, "se": 0.0, "ga": 1, "gp": 1}
    act, skip, pw_act, se_after = None, True, False, False
    for opt in opts:
        if opt in _ACT_FLAGS:
            act = _ACT_FLAGS[opt]
        elif opt == "noskip":
            skip = False
        elif opt == "pwa":
            pw_act = True
        elif opt == "sea":
            se_after = True
        else:
            m = re.fullmatch(r"(se|ga|gp|[rksec])([\d.]+)", opt)
            if not m:
                raise ValueError(f"cannot read option {opt!r} in block string {text!r}")
            key, val = m.groups()
            if key == "k":
                vals["k"] = tuple(int(v) for v in val.split(".") if v)
            elif key in ("e", "se"):
                vals[key] = float(val)
            else:
                vals[key] = int(val)
    if vals["c"] is None:
        raise ValueError(f"block string {text!r} has no output channels (c)")
    return BlockSpec(kind, vals["r"], vals["k"], vals["s"], vals["e"], vals["c"], vals["se"], act, skip,
                     vals["ga"], vals["gp"], pw_act, se_after)


def decode_arch(stages: list[list[str]]) -> list[list[BlockSpec]]:
    return [[decode_block(b) for b in stage] for stage in stages]


def scale_stages(stages: list[list[BlockSpec]], depth: float = 1.0, fix_first_last: bool = False,
                 depth_trunc: str = "ceil") -> list[list[BlockSpec]]:
    """Scale repeats per stage by `depth` (EfficientNet: ceil per stage; Lite keeps first/last stage)."""
    out = []
    for i, stage in enumerate(stages):
        if depth == 1.0 or (fix_first_last and i in (0, len(stages) - 1)):
            out.append(stage)
            continue
        total = sum(b.repeats for b in stage)
        target = math.ceil(total * depth) if depth_trunc == "ceil" else max(1, int(round(total * depth)))
        # spread the scaled count over the stage's specs in reverse, in proportion (as timm does)
        new = []
        for b in reversed(stage):
            r = max(1, round(b.repeats / total * target))
            new.append(replace(b, repeats=r))
            total, target = total - b.repeats, target - r
        new.reverse()
        out.append(new)
    return out


class MixedDepthwise(nn.Module):
    """MixNet's mixed depthwise conv: channel groups with different kernels, concatenated."""

    def __init__(self, channels: int, kernels: tuple[int, ...], stride: int):
        super().__init__()
        splits = [channels // len(kernels)] * len(kernels)
        splits[0] += channels - sum(splits)
        self.splits = splits
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
                                   for c, k in zip(splits, kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # slices, not torch.split: ExecuTorch's XNNPACK partitioner leaves split_with_sizes_copy outside the
        # delegate (one partition break per mixed conv); TFLite gets the same SLICE ops either way
        bounds = [0, *itertools.accumulate(self.splits)]
        return torch.cat([conv(x[:, a:b]) for conv, a, b in zip(self.convs, bounds, bounds[1:])], dim=1)


class MBConvNet(nn.Module):
    """stem → stages of blocks → (final 1×1 conv) → classifier head."""

    def __init__(self, stages: list[list[BlockSpec]], *, num_classes: int = 1000, width: float = 1.0,
                 stem_ch: int = 32, stem_act: str | None = None, act: str = "relu6", fix_stem: bool = False,
                 head_ch: int = 0, head_act: str | None = None, head_bias: bool = True, head_bn: bool = False,
                 scale_head: bool = True, se_gate: str = "hsigmoid", se_act: str = "relu",
                 se_from_expanded: bool = True, se_divisor: int = 8, dropout: float = 0.2,
                 divisor: int = 8, in_ch: int = 3, head_pool_first: bool = True):
        super().__init__()
        ch = lambda c: make_divisible(c * width, divisor)  # noqa: E731
        stem_out = stem_ch if fix_stem else ch(stem_ch)
        self.stem = ConvBNAct(in_ch, stem_out, 3, 2, act=stem_act or act)
        prev = stem_out
        blocks: list[nn.Module] = []
        for stage in stages:
            layers = []
            for spec in stage:
                out = ch(spec.out_ch) if spec.kind != "cn" else (ch(spec.out_ch) if scale_head else spec.out_ch)
                for i in range(spec.repeats):
                    stride = spec.stride if i == 0 else 1
                    layers.append(self._block(spec, prev, out, stride, act, se_gate, se_act,
                                              se_from_expanded, se_divisor))
                    prev = out
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        if head_ch and scale_head and width > 1.0:
            head_ch = ch(head_ch)
        self.head = ClassifierHead(prev, num_classes, head_ch, head_act or act, head_bias, head_bn, dropout,
                                   pool_first=head_pool_first)
        self.num_features = head_ch or prev
        init_weights(self)

    @staticmethod
    def _block(spec: BlockSpec, in_ch: int, out_ch: int, stride: int, default_act: str, se_gate: str,
               se_act: str, se_from_expanded: bool, se_divisor: int) -> nn.Module:
        act = spec.act or default_act
        kernel = spec.kernel[0]
        if spec.kind == "cn":
            return ConvBNAct(in_ch, out_ch, kernel, stride, act=act)
        mid = make_divisible(in_ch * spec.exp, 8) if spec.kind in ("ir", "er", "mx") else in_ch
        se_base = out_ch if spec.se_after else (mid if se_from_expanded else in_ch)
        se_ch = max(1, make_divisible(se_base * spec.se, se_divisor)) if spec.se else 0
        if spec.kind == "ds":
            return DepthwiseSeparable(in_ch, out_ch, kernel, stride, act, se_ch, se_gate, se_act,
                                      pw_act=spec.pw_act, skip=spec.skip, se_after=spec.se_after)
        if spec.kind == "er":
            return FusedMBConv(in_ch, out_ch, kernel, stride, mid, act, se_ch, se_gate, se_act)
        block = InvertedResidual(in_ch, out_ch, kernel, stride, mid, act, se_ch, se_gate, se_act,
                                 spec.expand_groups, spec.project_groups, spec.skip)
        if len(spec.kernel) > 1:  # MixNet: swap the depthwise conv for a mixed-kernel one
            block.dw.conv = MixedDepthwise(mid, spec.kernel, stride)
        return block

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_mbconv(arch: list[list[str]], *, depth: float = 1.0, fix_first_last: bool = False, **kw) -> MBConvNet:
    return MBConvNet(scale_stages(decode_arch(arch), depth, fix_first_last), **kw)


__all__ = ["BlockSpec", "MBConvNet", "build_mbconv", "decode_arch", "decode_block", "scale_stages",
           "make_activation"]
