"""NASNet-A Mobile (Zoph et al., CVPR 2018), PNASNet-5 Mobile (Liu et al., ECCV 2018) and AmoebaNet-A Mobile
(Real et al., AAAI 2019): ONE cell builder (the TF-slim NASNet cell semantics) driven by each paper's
genotype, which is data: ten operations, the hidden state each one reads, and which states the cell uses.

Hidden states inside a cell: 0 = this cell's input after ReLU-1×1-BN, 1 = the cell before that (reduced to
match), 2… = the five combinations (each the sum of two operations). States no operation reads are
concatenated as the cell's output. Ops on states 0/1 carry the cell's stride; the rest run at stride 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import init_weights
from ..registry import register_variants


@dataclass(frozen=True)
class CellSpec:
    ops: tuple[str, ...]        # 10 operations, two per combination
    inputs: tuple[int, ...]     # hidden state each operation reads
    used: tuple[int, ...]       # 7 flags: 1 = read inside the cell (not part of the output concat)


@dataclass(frozen=True)
class Genotype:
    normal: CellSpec
    reduction: CellSpec | None  # None: reduce with the normal cell at stride 2 (PNASNet)


NASNET_A = Genotype(
    normal=CellSpec(("separable_5x5_2", "separable_3x3_2", "separable_5x5_2", "separable_3x3_2", "avg_pool_3x3",
                     "none", "avg_pool_3x3", "avg_pool_3x3", "separable_3x3_2", "none"),
                    (0, 1, 1, 1, 0, 1, 1, 1, 0, 0), (1, 0, 0, 0, 0, 0, 0)),
    reduction=CellSpec(("separable_5x5_2", "separable_7x7_2", "max_pool_3x3", "separable_7x7_2", "avg_pool_3x3",
                        "separable_5x5_2", "none", "avg_pool_3x3", "separable_3x3_2", "max_pool_3x3"),
                       (0, 1, 0, 1, 0, 1, 3, 2, 2, 0), (1, 1, 1, 0, 0, 0, 0)))
PNASNET_5 = Genotype(
    normal=CellSpec(("separable_5x5_2", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3", "separable_5x5_2",
                     "separable_3x3_2", "separable_3x3_2", "max_pool_3x3", "separable_3x3_2", "none"),
                    (1, 1, 0, 0, 0, 0, 4, 0, 1, 0), (1, 1, 0, 0, 0, 0, 0)),
    reduction=None)
AMOEBANET_A = Genotype(
    normal=CellSpec(("avg_pool_3x3", "max_pool_3x3", "separable_3x3_2", "none", "none", "avg_pool_3x3",
                     "separable_3x3_2", "separable_5x5_2", "avg_pool_3x3", "separable_3x3_2"),
                    (0, 0, 1, 1, 0, 1, 0, 2, 5, 0), (1, 0, 1, 0, 0, 1, 0)),
    reduction=CellSpec(("separable_3x3_2", "avg_pool_3x3", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3",
                        "max_pool_3x3", "separable_3x3_2", "1x7_7x1", "avg_pool_3x3", "separable_7x7_2"),
                       (1, 0, 0, 2, 1, 0, 4, 0, 1, 0), (1, 1, 0, 0, 0, 0, 0)))


def _relu_conv_bn(in_ch: int, out_ch: int, kernel=1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_ch, out_ch, k, stride, ((k[0] - 1) // 2, (k[1] - 1) // 2),
                                              groups=groups, bias=False), nn.BatchNorm2d(out_ch))


class SeparableStack(nn.Sequential):
    """`separable_KxK_2`: (ReLU → depthwise K×K → pointwise → BN) twice; the stride is on the first."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int):
        super().__init__(nn.ReLU(), nn.Conv2d(in_ch, in_ch, k, stride, k // 2, groups=in_ch, bias=False),
                         nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(), nn.Conv2d(out_ch, out_ch, k, 1, k // 2, groups=out_ch, bias=False),
                         nn.Conv2d(out_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))


class FactorizedReduce(nn.Module):
    """Halve H×W without dropping pixels: two stride-2 1×1 convs, the second on the map shifted by one pixel
    (TF pads then slices; slicing first gives the same samples for even sizes and needs no PAD op)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.act = nn.ReLU()
        self.path1 = nn.Conv2d(in_ch, out_ch // 2, 1, 2, bias=False)
        self.path2 = nn.Conv2d(in_ch, out_ch - out_ch // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return self.bn(torch.cat([self.path1(x), self.path2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if name.startswith("separable_"):
        return SeparableStack(in_ch, out_ch, int(name.split("_")[1][0]), stride)
    if name.endswith("pool_3x3"):
        pool = (nn.MaxPool2d(3, stride, 1) if name.startswith("max")
                else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        return pool if in_ch == out_ch else nn.Sequential(pool, nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                                          nn.BatchNorm2d(out_ch))
    if name == "none":
        return nn.Identity() if stride == 1 and in_ch == out_ch else _relu_conv_bn(in_ch, out_ch, 1, stride)
    if name == "1x7_7x1":
        return nn.Sequential(_relu_conv_bn(in_ch, out_ch, (1, 7), stride), _relu_conv_bn(out_ch, out_ch, (7, 1)))
    raise ValueError(f"unknown cell operation {name!r}")


class Cell(nn.Module):
    def __init__(self, spec: CellSpec, in_ch: int, prev_ch: int | None, prev_reduced: bool, filters: int,
                 stride: int):
        """prev_ch None: the previous state IS this cell's raw input (first stem cell)."""
        super().__init__()
        if prev_ch is None:
            self.prev = nn.Identity()
            prev_out = in_ch
        elif prev_reduced:
            self.prev, prev_out = FactorizedReduce(prev_ch, filters), filters
        elif prev_ch != filters:
            self.prev, prev_out = _relu_conv_bn(prev_ch, filters), filters
        else:
            self.prev, prev_out = nn.Identity(), prev_ch
        self.base = _relu_conv_bn(in_ch, filters)
        channels = [filters, prev_out]
        self.ops = nn.ModuleList()
        self.inputs = spec.inputs
        for i, (name, src) in enumerate(zip(spec.ops, spec.inputs)):
            self.ops.append(make_op(name, channels[src], filters, stride if src < 2 else 1))
            if i % 2 == 1:
                channels.append(filters)
        # unused states join the output concat; the original inputs need reducing when the cell strides
        self.concat = [i for i, u in enumerate(spec.used) if not u]
        self.fix = nn.ModuleDict()
        for i in self.concat:
            if i < 2 and (stride == 2 or channels[i] != filters):
                self.fix[str(i)] = FactorizedReduce(channels[i], filters) if stride == 2 else \
                    _relu_conv_bn(channels[i], filters)
        self.out_channels = filters * len(self.concat)

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        states = [self.base(x), self.prev(prev)]
        for i in range(0, len(self.ops), 2):
            states.append(self.ops[i](states[self.inputs[i]]) + self.ops[i + 1](states[self.inputs[i + 1]]))
        return torch.cat([self.fix[str(i)](states[i]) if str(i) in self.fix else states[i] for i in self.concat],
                         dim=1)


class NASCellNet(nn.Module):
    """Stem conv → 2 reduction 'stem cells' (¼ and ½ of the filters) → 3 stages of `cells_per_stage` normal
    cells with a reduction between stages (filters ×2) → ReLU → pool → linear (TF-slim ImageNet layout)."""

    def __init__(self, genotype: Genotype, filters: int, cells_per_stage: int, stem_filters: int = 32,
                 num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem_filters, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_filters))
        reduction = genotype.reduction or genotype.normal
        # (channels, resolution level) of every output so far; the first stem cell's "previous" is its input
        outs = [(stem_filters, 0), (stem_filters, 0)]
        cells = []

        def add(spec, filters_, stride, first=False):
            (c_in, l_in), (c_prev, l_prev) = outs[-1], outs[-2]
            cell = Cell(spec, c_in, None if first else c_prev, l_prev < l_in, filters_, stride)
            cells.append(cell)
            outs.append((cell.out_channels, l_in + (stride == 2)))

        add(reduction, filters // 4, 2, first=True)
        add(reduction, filters // 2, 2)
        f = filters
        for stage in range(3):
            if stage:
                f *= 2
                if genotype.reduction is not None:        # NASNet/AmoebaNet: a separate reduction cell
                    add(genotype.reduction, f, 2)
            for i in range(cells_per_stage):
                # PNASNet: the stage's first cell is the normal cell at stride 2
                stride = 2 if (stage and i == 0 and genotype.reduction is None) else 1
                add(genotype.normal, f, stride)
        self.cells = nn.ModuleList(cells)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(outs[-1][0], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        prev = x
        for cell in self.cells:
            x, prev = cell(x, prev), x
        return self.fc(self.dropout(self.pool(self.act(x)).flatten(1)))


_GENOTYPES = {"nasnet_a": NASNET_A, "pnasnet_5": PNASNET_5, "amoebanet_a": AMOEBANET_A}


def nas_cell_net(genotype: str = "nasnet_a", filters: int = 44, cells_per_stage: int = 4, **kw) -> NASCellNet:
    return NASCellNet(_GENOTYPES[genotype], filters, cells_per_stage, **kw)


register_variants({
    "nasnet_a_mobile": dict(family="NASNet", year=2018, params_m=5.3, macs_m=564, top1=74.0,
                            paper="Learning Transferable Architectures for Scalable Image Recognition (Zoph et al., "
                                  "CVPR 2018), NASNet-A (4 @ 1056)",
                            kwargs=dict(genotype="nasnet_a", filters=44, cells_per_stage=4)),
    "pnasnet_5_mobile": dict(family="PNASNet", year=2018, params_m=5.1, macs_m=588, top1=74.2,
                             paper="Progressive Neural Architecture Search (Liu et al., ECCV 2018), PNASNet-5 "
                                   "(N=3, F=54)",
                             kwargs=dict(genotype="pnasnet_5", filters=54, cells_per_stage=3)),
    "amoebanet_a_mobile": dict(family="AmoebaNet", year=2019, params_m=5.1, macs_m=555, top1=74.5,
                               paper="Regularized Evolution for Image Classifier Architecture Search (Real et al., "
                                     "AAAI 2019), AmoebaNet-A (N=4, F=50)",
                               note="genotype from the authors' TF release; with the paper's N=4, F=50 the count is "
                                    "~12% params / ~10% MACs above its table (the paper does not give the 1x7-7x1 "
                                    "op's exact form or the stem widths)",
                               kwargs=dict(genotype="amoebanet_a", filters=50, cells_per_stage=4)),
}, nas_cell_net, resolution=224)
