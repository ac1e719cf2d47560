"""MobileViT XXS/XS/S (Mehta & Rastegari, ICLR 2022): MobileNetV2 blocks + MobileViT blocks (local conv,
then global attention over 2×2-patch token sets, folded back and fused with the input).

Unfold/fold are unflatten/permute/flatten with -1 for every data size, and the token grid is restored with
reshape_as — no tensor shape is read into Python, so the graph exports with static shapes and converts cleanly."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import (ClassifierHead, ConvBNAct, InvertedResidual, init_weights, make_activation, make_divisible,
                      multi_head_attention)
from ..registry import register_variants


class Attention(nn.Module):
    """Multi-head self-attention, written out (matmul–softmax–matmul) so every runtime sees plain ops."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(multi_head_attention(self.qkv(x), self.heads, self.scale))

    @staticmethod
    def extra_macs(inputs, output) -> int:
        b, n, d = inputs[0].shape
        return 2 * b * n * n * d     # q·kᵀ and attn·v (the Linear layers are counted by their own hooks)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), make_activation("swish"), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MobileViTBlock(nn.Module):
    def __init__(self, ch: int, dim: int, ffn: int, depth: int, heads: int = 4, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(ConvBNAct(ch, ch, 3, act="swish"), nn.Conv2d(ch, dim, 1, bias=False))
        self.transformer = nn.Sequential(*[TransformerLayer(dim, ffn, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj = ConvBNAct(dim, ch, 1, act="swish")
        self.fuse = ConvBNAct(2 * ch, ch, 3, act="swish")

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        # (B, d, H, W) → (B·p², H/p, W/p, d): pixel (i, j) of every patch forms one token set
        p = self.patch
        x = x.unflatten(2, (-1, p)).unflatten(4, (-1, p))          # B, d, h, p, w, p
        return x.permute(0, 3, 5, 2, 4, 1).flatten(0, 2)           # B·p·p, h, w, d

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = x.unflatten(0, (-1, p, p))                             # B, p, p, h, w, d
        return x.permute(0, 5, 3, 1, 4, 2).flatten(4, 5).flatten(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.unfold(self.local(x))
        tokens = self.norm(self.transformer(grid.flatten(1, 2)))
        y = self.proj(self.fold(tokens.reshape_as(grid)))
        return self.fuse(torch.cat([x, y], dim=1))


# (channels of layers 1-5, MV2 expansion, transformer dims of layers 3-5); ffn = 2·dim, depths 2/4/3, 4 heads
MOBILEVIT = {
    "xxs": ((16, 24, 48, 64, 80), 2, (64, 80, 96)),
    "xs": ((32, 48, 64, 80, 96), 4, (96, 120, 144)),
    "s": ((32, 64, 96, 128, 160), 4, (144, 192, 240)),
}


class MobileViT(nn.Module):
    def __init__(self, arch: str = "s", num_classes: int = 1000, dropout: float = 0.1):
        super().__init__()
        chans, exp, dims = MOBILEVIT[arch]
        self.stem = ConvBNAct(3, 16, 3, 2, act="swish")

        def mv2(i, o, s):
            return InvertedResidual(i, o, 3, s, make_divisible(i * exp, 8), act="swish")

        layers = [nn.Sequential(mv2(16, chans[0], 1)),
                  nn.Sequential(mv2(chans[0], chans[1], 2), mv2(chans[1], chans[1], 1), mv2(chans[1], chans[1], 1))]
        for i, (dim, depth) in enumerate(zip(dims, (2, 4, 3))):
            layers.append(nn.Sequential(mv2(chans[i + 1], chans[i + 2], 2),
                                        MobileViTBlock(chans[i + 2], dim, 2 * dim, depth)))
        layers.append(ConvBNAct(chans[-1], 4 * chans[-1], 1, act="swish"))
        self.blocks = nn.Sequential(*layers)
        self.head = ClassifierHead(4 * chans[-1], num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


register_variants({
    "mobilevit_xxs": dict(params_m=1.3, macs_m=None, top1=69.0, kwargs=dict(arch="xxs"),
                          note="the paper tabulates params and latency; its FLOPs figures are approximate"),
    "mobilevit_xs": dict(params_m=2.3, macs_m=None, top1=74.8, kwargs=dict(arch="xs"),
                         note="the paper tabulates params and latency; its FLOPs figures are approximate"),
    "mobilevit_s": dict(params_m=5.6, macs_m=None, top1=78.4, kwargs=dict(arch="s"),
                        note="the paper tabulates params and latency; its FLOPs figures are approximate"),
}, MobileViT, family="MobileViT", year=2022, resolution=256,
    paper="MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (Mehta & Rastegari, "
          "ICLR 2022)")
