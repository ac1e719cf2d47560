"""CondenseNet (Huang et al., CVPR 2018) in its inference form: the learned group convolutions, once
condensed, are a fixed channel gather (index_select with a stored index) followed by a standard group conv
and a channel shuffle — exactly what the authors' `convert_model` produces. Dense stages with exponentially
growing growth rate, pooling-only transitions, a condensed linear classifier (half the features).

The gather is written as channel slices when the index is a few contiguous runs (the identity order built
here is one run: no op at all). index_select becomes a GATHER that neither TFLite's nor ExecuTorch's XNNPACK
delegate runs, and TFLite's layout pass wraps it in TRANSPOSEs: session 3's matrix measured CondenseNet
TFLite int8 with 181 TRANSPOSE and 78 partitions (2.27× float), ExecuTorch with 38 partitions. A trained
index with many runs keeps index_select. Same function, same state_dict."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import channel_shuffle, init_weights
from ..registry import register_variants


MAX_SLICES = 4  # more runs than this: one GATHER is cheaper than a concat of many slices


def contiguous_runs(index: torch.Tensor) -> list[tuple[int, int]] | None:
    """[(start, stop), ...] covering `index` in order, or None when there are more than MAX_SLICES runs (or
    the values cannot be read: a meta tensor)."""
    if index.is_meta:
        return None
    runs: list[tuple[int, int]] = []
    for i in index.tolist():
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs if len(runs) <= MAX_SLICES else None


def gather_channels(x: torch.Tensor, index: torch.Tensor, runs: list[tuple[int, int]] | None) -> torch.Tensor:
    if runs is None:
        return torch.index_select(x, 1, index)
    if len(runs) == 1 and runs[0] == (0, x.shape[1]):
        return x
    parts = [x[:, a:b] for a, b in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _refresh_after_load(module: "_Gathers", incompatible_keys) -> None:  # a function, so the model pickles
    module.refresh_runs()


class _Gathers(nn.Module):
    """A module with an `index` buffer: its runs are read once, and again whenever a state dict is loaded
    (a trained model's index). Code that edits `index` in place calls refresh_runs()."""

    def _init_runs(self) -> None:
        self.refresh_runs()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def refresh_runs(self) -> None:
        self.runs = contiguous_runs(self.index)


class CondenseConv(_Gathers):
    """gather the kept input channels → BN → ReLU → group conv → shuffle. `index` is a buffer: converting a
    trained CondenseNet fills it with the channels each group learned to keep (identity order here)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int, condense_factor: int):
        super().__init__()
        kept = in_ch * groups // condense_factor      # each of `groups` groups keeps in_ch / C channels
        self.register_buffer("index", torch.arange(kept) % in_ch)
        self._init_runs()
        self.norm = nn.BatchNorm2d(kept)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(kept, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.act(self.norm(gather_channels(x, self.index, self.runs))))
        return channel_shuffle(x, self.groups)


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, groups: int, condense_factor: int, bottleneck: int = 4):
        super().__init__()
        self.conv1 = CondenseConv(in_ch, bottleneck * growth, 1, groups, condense_factor)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.act2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, 1, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv2(self.act2(self.norm2(self.conv1(x))))], dim=1)


class CondenseLinear(_Gathers):
    """The classifier keeps a learned half of the features (index buffer), then a plain linear layer."""

    def __init__(self, in_features: int, num_classes: int, keep: float = 0.5):
        super().__init__()
        kept = int(in_features * keep)
        self.register_buffer("index", torch.arange(kept))
        self._init_runs()
        self.fc = nn.Linear(kept, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(gather_channels(x, self.index, self.runs))


class CondenseNet(nn.Module):
    def __init__(self, stages=(4, 6, 8, 10, 8), growth=(8, 16, 32, 64, 128), groups: int = 4,
                 condense_factor: int = 4, num_classes: int = 1000):
        super().__init__()
        ch = 2 * growth[0]
        self.stem = nn.Conv2d(3, ch, 3, 2, 1, bias=False)
        blocks: list[nn.Module] = []
        for s, (n, g) in enumerate(zip(stages, growth)):
            if s:
                blocks.append(nn.AvgPool2d(2))       # transitions are pooling only
            for _ in range(n):
                blocks.append(DenseLayer(ch, g, groups, condense_factor))
                ch += g
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(ch)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = CondenseLinear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.norm(self.blocks(self.stem(x)))))
        return self.classifier(x.flatten(1))


register_variants({
    # paper Table 5: G = C = 8 is the 274 M-MAC model, G = C = 4 the 529 M one
    "condensenet_g8c8": dict(params_m=2.9, macs_m=274, top1=71.0, kwargs=dict(groups=8, condense_factor=8)),
    "condensenet_g4c4": dict(params_m=4.8, macs_m=529, top1=73.8, kwargs=dict(groups=4, condense_factor=4)),
}, CondenseNet, family="CondenseNet", year=2018, resolution=224,
    paper="CondenseNet: An Efficient DenseNet using Learned Group Convolutions (Huang et al., CVPR 2018)")
