"""EdgeViT XXS/XS/S (Pan et al., ECCV 2022): local-global-local blocks — depthwise-conv local aggregation,
sparse global attention over a strided subsample of the map, and a depthwise transposed conv that
propagates the result back to every pixel. Maps go to tokens and back with flatten/transpose/reshape_as
only, so no shape is read into Python and the graph exports with static sizes."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import init_weights, multi_head_attention
from ..registry import register_variants


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (PatchEmbed's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, patch)
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class LocalAgg(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim * mlp_ratio, 1), nn.GELU(), nn.Conv2d(dim * mlp_ratio, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class GlobalSparseAttn(nn.Module):
    """Attention among every sr-th pixel (kernel-1 stride-sr pooling), then a depthwise sr×sr transposed conv
    spreads each result over its sr×sr neighbourhood."""

    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.sampler = nn.AvgPool2d(1, sr) if sr > 1 else nn.Identity()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.local_prop = nn.ConvTranspose2d(dim, dim, sr, sr, groups=dim) if sr > 1 else nn.Identity()
        self.norm = nn.LayerNorm(dim) if sr > 1 else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: NCHW map → (B, H·W, C) tokens."""
        sub = self.sampler(x)
        t = sub.flatten(2).transpose(1, 2)
        y = multi_head_attention(self.qkv(t), self.heads, self.scale)    # B, h·w, C
        y = self.local_prop(y.transpose(1, 2).reshape_as(sub))           # back to the full map
        return self.proj(self.norm(y.flatten(2).transpose(1, 2)))

    def extra_macs(self, inputs, output) -> int:
        sub = self.sampler(inputs[0])
        b, c = sub.shape[:2]
        n = sub.shape[2] * sub.shape[3]
        return 2 * b * n * n * c


class SelfAttn(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int, mlp_ratio: int = 4):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = ChannelLayerNorm(dim, eps=1e-8)
        self.attn = GlobalSparseAttn(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        t = x.flatten(2).transpose(1, 2) + self.attn(self.norm1(x))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape_as(x)


class LGLBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.local_agg = LocalAgg(dim) if sr > 1 else nn.Identity()
        self.self_attn = SelfAttn(dim, heads, sr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.self_attn(self.local_agg(x))


EDGEVIT = {  # depths, widths, head dim (paper, Table 1; authors' release)
    "xxs": ((1, 1, 3, 2), (36, 72, 144, 288), 36),
    "xs": ((1, 1, 3, 1), (48, 96, 240, 384), 48),
    "s": ((1, 2, 5, 3), (48, 96, 240, 384), 48),
}


class EdgeViT(nn.Module):
    def __init__(self, arch: str = "xxs", num_classes: int = 1000, sr_ratios=(4, 2, 2, 1)):
        super().__init__()
        depths, dims, head_dim = EDGEVIT[arch]
        stages, prev = [], 3
        for i, (d, dim, sr) in enumerate(zip(depths, dims, sr_ratios)):
            stages.append(nn.Sequential(PatchEmbed(prev, dim, 4 if i == 0 else 2),
                                        *[LGLBlock(dim, dim // head_dim, sr) for _ in range(d)]))
            prev = dim
        self.blocks = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(prev)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.norm(self.blocks(x))).flatten(1))


register_variants({
    "edgevit_xxs": dict(params_m=4.1, macs_m=600, top1=74.4, kwargs=dict(arch="xxs")),
    "edgevit_xs": dict(params_m=6.7, macs_m=1100, top1=77.5, kwargs=dict(arch="xs")),
    "edgevit_s": dict(params_m=11.1, macs_m=1900, top1=81.0, kwargs=dict(arch="s"),
                      note="blocks 1-2-5-3 as in the authors' release: MACs agree, params count ~18% above "
                           "the paper's 11.1 M (XXS/XS agree on both)"),
}, EdgeViT, family="EdgeViT", year=2022, resolution=224,
    paper="EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers (Pan et al., ECCV 2022)")
