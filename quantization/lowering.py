"""Target-aware lowering: rewrite blocks into the forms each runtime runs in int8 inside its delegate.

`lower(model, target, int8=True)` returns a rewritten COPY (the caller's model is never touched) that
computes the same function in float. What it rewrites, and why (measured with litert-torch 0.10 /
ai-edge-litert 2.3 / ExecuTorch 1.5 XNNPACK, see benchmarks/README.md):

* hard-swish / hard-sigmoid (ours and torch.nn's) for int8 → x·(relu6(x + 3)·⅙) with the constants held as
  (1,1,1,1) buffers. Each piece is an int8 op XNNPACK runs (ADD with fused RELU6, MUL). Two details matter:
  - LiteRT's XNNPACK delegate runs a native HARD_SWISH in float only, so int8 models fall out of the
    delegate around every activation (16 partitions in MobileNetV3-Large);
  - litert-torch's NHWC layout pass only moves an elementwise op to NHWC when every input is 4-D. A scalar
    `x + 3.0` becomes a 0-d constant, the op stays NCHW and gets a TRANSPOSE on each side (36 in
    MobileNetV3-Small). Division `/ 6` is not annotated by any PT2E quantizer, so it stays a float island
    with DEQUANTIZE/QUANTIZE around it; a multiplication by a ⅙ buffer is quantized.
  For float exports hard-swish becomes torch's own `nn.Hardswish` (native HARD_SWISH / XNNPACK hardswish).
  ExecuTorch keeps `nn.Hardswish` in int8 too: its partitioner delegates dequantize → hardswish → quantize
  and XNNPACK runs that as one int8 HardSwish. The decomposition costs an ADD, a clamp, two MULs and two
  requantizations there: MobileNetV3-Large int8 4.23 → 3.53 ms, float 6.93 ms (`lwdeploy profile X.pte
  --runs 100`, 1 thread; its 21 hard-swishes took ~0.8 ms decomposed, 0.13 ms native).
* squeeze-excite gates with hard-sigmoid: the +3 is folded into the bias of the excite conv, so the gate is
  relu6 (fused into the conv) and one MUL by ⅙ on a 1×1×C tensor; the output range is fixed by the function.
* TFLite float only: `nn.AvgPool2d(count_include_pad=False)` with padding becomes a zero-padded average
  divided by the padded average of a one-channel ones map (`ExcludePadAvgPool2d`): litert-torch lowers the
  original to STABLEHLO_REDUCE_WINDOW, which XNNPACK does not run (ShuffleNet v1: 4.3 of 13 ms).
* ExecuTorch float only: `nn.AvgPool2d(count_include_pad=True)` with padding becomes a zero pad + an unpadded
  average (`IncludePadAvgPool2d`): XNNPACK's pooling never counts padding, so the partitioner left the
  original outside the delegate (DiCENet: 3 pools, 4 partitions → 1). Not in int8: XNNPACK has no int8
  average pooling, and the int8 program with a pad before a float pool fails to load ("Failed to create
  StaticConstantPad node … xnn_status_invalid_parameter"). int8 writes such pools, and unpadded ones of ≤ 25
  taps (CondenseNet's), as the depthwise conv they are (`AvgPoolDepthwiseConv`).
* TFLite only: explicit `nn.ZeroPad2d` / `nn.ConstantPad2d(…, 0)` directly before a convolution in a
  Sequential is folded into the convolution's padding when symmetric (one PAD op less).
* TFLite and ExecuTorch: a depthwise convolution with more than 25 taps (MixNet's 7×7, 9×9, 11×11) becomes
  a sum of depthwise convolutions of ≤ 25 taps each, whose outputs are sliced by the tile's offset
  (`TiledDepthwiseConv2d`). XNNPACK runs depthwise kernels of up to 25 taps with its DWConv microkernels and
  anything larger as a generic IGEMM: in MixNet-S int8 the 14 large ones took 9.4 of 14.1 ms, against
  ~0.04 ms for a 5×5 of the same shape (`lwdeploy profile`, 1 thread). A BatchNorm right after it in a
  ConvBNAct is folded into the tiles first (the sum is no longer a conv that PT2E could fold it into).
* TFLite and ExecuTorch: a depthwise `ConvTranspose2d` with kernel = stride (EdgeViT's local propagation)
  becomes a 1×1 conv with r² outputs per channel + pixel_shuffle (`DepthwiseUpsample`): litert-torch wrote one
  TRANSPOSE_CONV per channel (540 in EdgeViT-XXS). EdgeViT-XXS float / int8, TFLite 18.3 → 13.9 / 11.7 → 7.4 ms,
  ExecuTorch 18.3 → 16.1 / 11.5 → 9.2 ms (`benchmarks/artifacts_ab.py` on the old and new exports, 1 thread).
* ExecuTorch: `nn.LayerNorm` (and EdgeViT's channel LayerNorm) takes its means with a linear (1×1 conv) layer of
  weights 1/C (`LinearMeanLayerNorm`, `ConvMeanLayerNorm`): the partitioner delegates no layer_norm, so each ran
  on the portable kernel between partitions. In int8 these stay float (keep_float.layer_norms).
* TFLite float: a BatchNorm that no conv feeds alone (a pre-activation BN after a cat) becomes a 1×1 depthwise
  conv (`BatchNormDepthwise`; litert-torch wrote SUB + MUL), and a 1×1 average pool a strided 1×1 depthwise conv
  (LiteRT's XNNPACK delegate takes no 1×1 pool). CondenseNet float 24.06 → 23.48 ms, DiCENet 3.31 → 3.19 ms.
* TFLite and ExecuTorch: a BatchNorm of a cat of convs (MixNet's mixed depthwise conv, NAS cells'
  FactorizedReduce) is folded into those convs, float and int8 alike (`_fold_batchnorms_after_cat`).
* TFLite and ExecuTorch int8: a stride-2 RGB stem conv with more than 9 taps (SqueezeNet 1.0's and SqueezeNeXt's
  7×7) becomes space-to-depth + a stride-1 conv on 4× the channels (`SpaceToDepthConv`): a 2×2/2 conv with
  one-hot weights gathers each 2×2 pixel block into 12 channels (exact in float; in int8 its output, the
  image's values rearranged, gets its own calibrated scale: SqueezeNeXt output SQNR within 0.2 dB of before),
  then a ⌈k/2⌉-square conv with the original weights regrouped. int8 convs run a 3-deep dot product per tap far
  below their speed on wider inputs; the 12-deep one recovers it. SqueezeNeXt int8 TFLite 3.87 → 3.17 ms,
  ExecuTorch 4.02 → 3.14 ms (float 7.31 / 6.63 ms). Float is slower in this form (7.31 → 7.96 / 6.63 → 7.09
  ms), so float keeps the original; so do 3×3 stems (int8 TFLite 1–2 % slower in this form: docs/int8.md).
  The gather is a conv, not pixel_unshuffle: that reshape-permute-reshape cost one or two extra TRANSPOSEs on
  the image (`benchmarks/artifacts_ab.py` on throwaway exports, 1 thread).
* TFLite, opt-in (`tf_same_kernels=True`): stride-2 convolutions with PyTorch's symmetric padding on an even
  input do not match TF "SAME" (which pads 0 before / 1 after), so litert-torch emits a PAD op before each.
  A kernel one tap larger, whose extra last tap is zero, with the same symmetric padding, covers exactly the
  same input window AND is TF "SAME": no PAD op. Chosen at trace time (shapes are static then). Off by
  default because it measured SLOWER on XNNPACK (see `lower`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lwdeploy.errors import LwdeployError
from lwdeploy.models import layers

TARGETS = ("tflite", "executorch", "coreml")


class _Consts(nn.Module):
    """Holds 3 and ⅙ as (1,1,1,1) buffers: 4-D constants keep litert-torch's layout pass in NHWC."""

    def __init__(self):
        super().__init__()
        self.register_buffer("three", torch.full((1, 1, 1, 1), 3.0), persistent=False)
        self.register_buffer("sixth", torch.full((1, 1, 1, 1), 1.0 / 6.0), persistent=False)

    def _c(self, x: torch.Tensor):
        if x.dim() == 4:
            return self.three, self.sixth
        return 3.0, 1.0 / 6.0


class QuantHardSigmoid(_Consts):
    """relu6(x + 3)·⅙ — ADD (relu6 fused) and MUL, both int8 in every delegate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three, sixth = self._c(x)
        return F.relu6(x + three) * sixth


class QuantHardSwish(_Consts):
    """x·(relu6(x + 3)·⅙) — int8 ADD, MUL, MUL instead of a float-only HARD_SWISH."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three, sixth = self._c(x)
        return x * (F.relu6(x + three) * sixth)


class ScaledReLU6(_Consts):
    """relu6(x)·⅙: a hard-sigmoid whose +3 was folded into the bias of the conv before it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, sixth = self._c(x)
        return F.relu6(x) * sixth


class TFSameConv2d(nn.Conv2d):
    """A Conv2d that, for input sizes where PyTorch's symmetric padding is not TF "SAME", runs an equivalent
    kernel one tap larger (zero last tap) that is — so litert-torch emits no PAD op. Exact in float."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "TFSameConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        new.load_state_dict(conv.state_dict())
        # A parameter of its own (not F.pad(weight) in forward): PT2E's conv-BN folding and weight observers
        # need the conv's weight to be a graph constant, not the output of an op.
        with torch.no_grad():
            new.weight_same = nn.Parameter(F.pad(conv.weight, (0, 1, 0, 1)), requires_grad=False)
        new.train(conv.training)
        return new

    def _grown(self, size: int, dim: int) -> bool | None:
        """True: grow this spatial dim by one tap; False: already SAME/VALID; None: cannot express."""
        k, s, p = self.kernel_size[dim], self.stride[dim], self.padding[dim]
        out = (size + 2 * p - k) // s + 1
        if p == 0:
            return False                       # VALID (or fine as is)
        if _is_same(size, k, s, p, out):
            return False
        if (size + 2 * p - (k + 1)) // s + 1 == out and _is_same(size, k + 1, s, p, out):
            return True
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4
                or any(d != 1 for d in self.dilation)):
            return super().forward(x)
        grow = [self._grown(int(x.shape[2 + d]), d) for d in (0, 1)]
        if grow != [True, True]:
            return super().forward(x)        # already SAME, or a size where only one dim would grow
        # the extra tap sits at the END of each dim, so every window starts where it did (i·s − p)
        return F.conv2d(x, self.weight_same, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ExcludePadAvgPool2d(nn.Module):
    """AvgPool2d(count_include_pad=False) as a zero-padded average over the padded average of a ones map.
    litert-torch lowers the original to STABLEHLO_REDUCE_WINDOW, which XNNPACK does not run (ShuffleNet v1
    float: 4.3 of 13 ms on the reference kernels); this form is PAD + AVERAGE_POOL_2D + DIV, all delegated.
    Float only: the int8 quantizer (tflite_int8.py) rewrites padded pools itself."""

    def __init__(self, pool: nn.AvgPool2d):
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:, :1])            # one channel: the count map costs ~1/C of the pool
        pool = lambda t: F.avg_pool2d(t, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return pool(x) / pool(ones)


# a 3×3 RGB stem keeps its form: in space-to-depth form int8 was no faster (module docstring)
MAX_STEM_TAPS = 9
MAX_DW_TAPS = 25  # the largest depthwise kernel XNNPACK's DWConv microkernels take (taps = kh·kw)


def dw_tiles(kh: int, kw: int, stride: tuple[int, int] = (1, 1), max_taps: int = MAX_DW_TAPS) -> tuple[int, int]:
    """Tile shape (th, tw), th·tw ≤ max_taps, covering a kh×kw kernel with the fewest tiles (fewest ADDs).
    Tiles start at multiples of the stride (so each is the same conv's output, shifted) unless one spans all."""
    best = None
    for th in range(1, min(kh, max_taps) + 1):
        if th < kh and th % stride[0]:
            continue
        tw = min(kw, max_taps // th)
        while tw < kw and tw % stride[1]:
            tw -= 1
        if tw < 1:
            continue
        n = math.ceil(kh / th) * math.ceil(kw / tw)
        if best is None or n < best[0]:
            best = (n, th, tw)
    return best[1], best[2]


class IncludePadAvgPool2d(nn.Module):
    """AvgPool2d(count_include_pad=True) with padding as an explicit zero pad and an unpadded average (exact).
    XNNPACK's average pooling always leaves padding out of the count, so ExecuTorch's partitioner refuses the
    original and runs it on a portable kernel between two partitions (DiCENet: 3 pools, 4 partitions)."""

    def __init__(self, pool: nn.AvgPool2d):
        super().__init__()
        self.kernel_size, self.stride = pool.kernel_size, pool.stride
        ph, pw = (pool.padding, pool.padding) if isinstance(pool.padding, int) else pool.padding
        self.pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.pad), self.kernel_size, self.stride, 0)


class AvgPoolDepthwiseConv(nn.Conv2d):
    """AvgPool2d (counting its padding, or unpadded) as the depthwise conv it is: every weight 1/(kh·kw), zero
    padding (exact; its int8 weights are exact too: one value per channel). For ExecuTorch int8: the pad + pool form
    above made XNNPACK fail at load ("Failed to create StaticConstantPad node"), so the pool ran on a
    portable kernel between partitions; an int8 depthwise conv is an ordinary delegated DWConv. DiCENet-0.5
    int8: 4 partitions → 1, 2.25× → ~1.0× its float time (docs/int8_zoo.md)."""

    def __init__(self, pool: nn.AvgPool2d, channels: int):
        two = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        k = two(pool.kernel_size)
        super().__init__(channels, channels, k, two(pool.stride or k), two(pool.padding), groups=channels, bias=False)
        with torch.no_grad():
            self.weight.fill_(1.0 / (k[0] * k[1]))


class DepthwiseUpsample(nn.Module):
    """`ConvTranspose2d(C, C, r, stride=r, groups=C)` — each pixel spread over an r×r block with its channel's
    weights (EdgeViT's local propagation) — as a 1×1 conv giving r² outputs per channel, then pixel_shuffle
    (same function: output (c, h·r + a, w·r + b) = x(c, h, w)·W(c, a, b) + bias(c) either way).
    litert-torch writes a grouped transposed conv as one TRANSPOSE_CONV per channel between SLICEs and a
    CONCATENATION (EdgeViT-XXS: 540 of them, ~9 of 18.8 ms float TFLite)."""

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        channels, r = up.in_channels, up.kernel_size[0]
        self.r = r
        self.conv = nn.Conv2d(channels, channels * r * r, 1, groups=channels, bias=up.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(up.weight.reshape(channels * r * r, 1, 1, 1))
            if up.bias is not None:
                self.conv.bias.copy_(up.bias.repeat_interleave(r * r))
        self.conv.requires_grad_(up.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pixel_shuffle written out: ExecuTorch decomposes F.pixel_shuffle with a clone its partitioner leaves out
        n, _, h, w = x.shape
        r = self.r
        y = self.conv(x).reshape(n, -1, r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, -1, h * r, w * r)


def _is_depthwise_upsample(m: nn.Module) -> bool:
    return (type(m) is nn.ConvTranspose2d and m.groups == m.in_channels == m.out_channels
            and m.kernel_size == m.stride and m.kernel_size[0] == m.kernel_size[1] and m.padding == (0, 0)
            and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.padding_mode == "zeros")


class LinearMeanLayerNorm(nn.Module):
    """`nn.LayerNorm` over the last dim, with its means taken by a linear layer of weights 1/C (same function).
    ExecuTorch's XNNPACK partitioner takes no layer_norm (and mean.dim only over a 4-D map's H×W), so every
    LayerNorm ran on the portable kernel between two partitions. A linear, a subtraction, a multiply, rsqrt and
    an add are all XNNPACK ops: EdgeViT-XXS 51 → 27 partitions, int8 9.12 → 8.19 ms, float 16.15 → 15.15 ms
    (`benchmarks/artifacts_ab.py` on the two exports, 1 thread)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        channels = norm.normalized_shape[-1]
        self.register_buffer("mean_weight", torch.full((1, channels), 1.0 / channels))
        # ε as the variance layer's bias, not an add after it: coremltools' linear-bias fusion fails on a scalar
        # added to a 1-wide linear (IndexError), and Core ML shares this lowering in `--target all --int8`
        self.register_buffer("eps_bias", torch.full((1,), float(norm.eps)))
        self.weight, self.bias = norm.weight, norm.bias

    def _mean(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.mean_weight, bias)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        return self._affine(centred * torch.rsqrt(self._mean(centred * centred, self.eps_bias)))


class ConvMeanLayerNorm(LinearMeanLayerNorm):
    """A LayerNorm over the channels of an NCHW map (EdgeViT's ChannelLayerNorm: permute, LayerNorm, permute back)
    with its means taken by a 1×1 conv of weights 1/C: no permutes, every op an XNNPACK one (same function)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__(norm)
        self.mean_weight = self.mean_weight.reshape(1, -1, 1, 1)

    def _mean(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, self.mean_weight, bias)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


def _is_plain_layernorm(m: nn.Module, cls: type) -> bool:
    return (type(m) is cls and len(m.normalized_shape) == 1 and m.elementwise_affine
            and m.weight is not None and m.bias is not None)


def _xnnpack_layernorms(model: nn.Module) -> None:
    from lwdeploy.models.families.edgevit import ChannelLayerNorm

    _replace_modules(model, lambda m: _is_plain_layernorm(m, nn.LayerNorm), LinearMeanLayerNorm)
    _replace_modules(model, lambda m: _is_plain_layernorm(m, ChannelLayerNorm), ConvMeanLayerNorm)


class TiledDepthwiseConv2d(nn.Module):
    """A depthwise Conv2d as a sum of depthwise convs of ≤ 25 taps (same function).

    Tile (r0, c0) of the kernel, run with the original stride s and padding, gives at output position
    (i + r0/s, j + c0/s) exactly that tile's share of the original output at (i, j); so each tile's output is
    sliced by its offset and the slices are summed. No explicit PAD: the convolutions keep their own padding
    (an explicit int8 PAD before them is what XNNPACK rejected in ExecuTorch, and cost TRANSPOSEs in TFLite).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        kh, kw = conv.kernel_size
        th, tw = dw_tiles(kh, kw, conv.stride)
        c = conv.in_channels
        self.stride, self.padding, self.kernel_size = conv.stride, conv.padding, (kh, kw)
        self.offsets: list[tuple[int, int]] = []
        self.tiles = nn.ModuleList()
        for r0 in range(0, kh, th):
            for c0 in range(0, kw, tw):
                w = conv.weight.detach()[:, :, r0:r0 + th, c0:c0 + tw]
                first = not self.tiles
                tile = nn.Conv2d(c, conv.out_channels, tuple(w.shape[2:]), conv.stride, conv.padding,
                                 groups=conv.groups, bias=first and conv.bias is not None)
                tile.weight = nn.Parameter(w.clone())
                if tile.bias is not None:
                    tile.bias = nn.Parameter(conv.bias.detach().clone())
                self.tiles.append(tile)
                self.offsets.append((r0 // conv.stride[0], c0 // conv.stride[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        oh, ow = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        out = None
        for (i0, j0), tile in zip(self.offsets, self.tiles):
            y = tile(x)
            if (i0, j0, y.shape[2], y.shape[3]) != (0, 0, oh, ow):
                y = y[:, :, i0:i0 + oh, j0:j0 + ow]
            out = y if out is None else out + y
        return out


class SpaceToDepthConv(nn.Module):
    """A stride-2 conv on a few-channel image as space-to-depth + a stride-1 conv (module docstring).

    `gather`: 2×2 stride-2 conv with one-hot weights; output channel c·4 + 2r + r' is input channel c at row
    offset r, column offset r' (pixel_unshuffle's order). `conv`: the original kernel, `shift` zero taps in
    front so the window starts on an even row, grown to 2K×2K, regrouped into K×K taps over those channels.
    The paddings come from `plan` for the input size it was built for."""

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int], gather_padding: int, conv_padding: int, shift: int,
                 taps: int):
        super().__init__()
        self.size = tuple(size)
        c, o, k = conv.in_channels, conv.out_channels, conv.kernel_size[0]
        self.gather = nn.Conv2d(c, 4 * c, 2, 2, gather_padding, bias=False)
        one_hot = torch.zeros(4 * c, c, 2, 2)
        for ch in range(c):
            for r in range(2):
                for r2 in range(2):
                    one_hot[ch * 4 + r * 2 + r2, ch, r, r2] = 1.0
        w = torch.zeros(o, c, 2 * taps, 2 * taps, dtype=conv.weight.dtype)
        w[:, :, shift:shift + k, shift:shift + k] = conv.weight.detach()
        self.conv = nn.Conv2d(4 * c, o, taps, 1, conv_padding, bias=conv.bias is not None)
        with torch.no_grad():
            self.gather.weight.copy_(one_hot)
            # (o, c, K, r, K, r') → (o, c, r, r', K, K): the gather's channel order
            regrouped = w.reshape(o, c, taps, 2, taps, 2).permute(0, 1, 3, 5, 2, 4)
            self.conv.weight.copy_(regrouped.reshape(o, 4 * c, taps, taps))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())

    @staticmethod
    def plan(k: int, p: int, sizes: tuple[int, ...]) -> tuple[int, int, int, int] | None:
        """(gather padding, conv padding, shift, taps) giving exactly the original's output on every input
        size in `sizes` (height, width) with symmetric paddings only, or None. The gather's padding supplies the
        conv's left padding rounded up to even (its surplus is the kernel's `shift` of zero taps); padding it
        also adds on the right reads at most columns no output uses."""
        for conv_padding in range(3):
            for gather_padding in range(2 * k):
                shift = gather_padding + 2 * conv_padding - p
                if shift < 0:
                    continue
                taps = math.ceil((k + shift) / 2)
                gathered = [(n + 2 * gather_padding - 2) // 2 + 1 for n in sizes]
                if all(g + 2 * conv_padding - taps + 1 == (n + 2 * p - k) // 2 + 1 for g, n in zip(gathered, sizes)):
                    return gather_padding, conv_padding, shift, taps
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:      # the paddings fit one size (an export's shapes are static)
            raise LwdeployError(f"space-to-depth stem planned for {self.size[0]}×{self.size[1]} input got "
                                f"{x.shape[-2]}×{x.shape[-1]}",
                                "lower the model with an example of the size it runs at")
        return self.conv(self.gather(x))


def _space_to_depth_stem(model: nn.Module, example: torch.Tensor | None) -> None:
    """The one conv that reads the image, if it is a stride-2 square conv on ≤ 4 channels with > 9 taps,
    becomes a SpaceToDepthConv planned for the example's size (without an example, nothing changes: the form
    is exact for one input size)."""
    from lwdeploy.models.input_readers import conv_reading_input_alone

    if example is None:
        return
    try:
        path = conv_reading_input_alone(model, example)
    except Exception:  # noqa: BLE001 — a model that refuses this input keeps its stem
        return
    if path is None:
        return
    conv = model.get_submodule(path)
    size = tuple(example.shape[-2:])
    k, p = conv.kernel_size[0], conv.padding
    if (type(conv) is not nn.Conv2d or conv.in_channels > 4 or conv.groups != 1 or conv.stride != (2, 2)
            or conv.kernel_size != (k, k) or k * k <= MAX_STEM_TAPS or conv.dilation != (1, 1)
            or isinstance(p, str) or p[0] != p[1] or conv.padding_mode != "zeros"):
        return
    plan = SpaceToDepthConv.plan(k, p[0], size)
    if plan is None:
        return
    parent, _, name = path.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    setattr(holder, name, SpaceToDepthConv(conv, size, *plan))


def _is_large_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels > 1 and m.out_channels == m.in_channels
            and m.kernel_size[0] * m.kernel_size[1] > MAX_DW_TAPS and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _fold_batchnorm(convs: list[tuple[nn.Conv2d, int]], bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode `bn` into the convs that produce its channels: (conv, first channel) pairs, each fused
    with its slice of the BN by torch's own conv-BN fusion."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    for conv, start in convs:
        sl = slice(start, start + conv.out_channels)
        part = lambda t: None if t is None else t.detach()[sl]  # noqa: E731
        with torch.no_grad():
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, part(bn.running_mean),
                                                          part(bn.running_var), bn.eps, part(bn.weight),
                                                          part(bn.bias))
            conv.bias.requires_grad_(conv.weight.requires_grad)  # a new bias (the conv had none) is trainable too


def _foldable(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm2d and bn.track_running_stats


def _fold_batchnorms_after_cat(model: nn.Module) -> None:
    """BatchNorm(cat of convs) → each conv takes its slice of the BN: MixNet's mixed depthwise conv in a
    ConvBNAct, NAS cells' FactorizedReduce. No converter folds a BN that reads a cat, so float exports ran it
    as its own op (TFLite SUB + MUL, ExecuTorch a 1×1 F32 DWConv, ~0.03 ms each in MixNet-S). int8 folded it
    on the exported graph already (batchnorm_fold.batchnorm_through_cat), which now finds none left."""
    from lwdeploy.models.families.nas_cells import FactorizedReduce
    from lwdeploy.models.mbconv import MixedDepthwise

    for m in model.modules():
        if isinstance(m, layers.ConvBNAct) and isinstance(m.conv, MixedDepthwise) and _foldable(m.bn):
            starts = [sum(m.conv.splits[:i]) for i in range(len(m.conv.splits))]
            _fold_batchnorm(list(zip(m.conv.convs, starts)), m.bn)
            m.bn = nn.Identity()
        elif isinstance(m, FactorizedReduce) and _foldable(m.bn):
            _fold_batchnorm([(m.path1, 0), (m.path2, m.path1.out_channels)], m.bn)
            m.bn = nn.Identity()


def _tile_large_depthwise(model: nn.Module) -> None:
    for m in model.modules():  # BN first: ConvBNAct(large depthwise conv, bn, act)
        if isinstance(m, layers.ConvBNAct) and _is_large_depthwise(m.conv) and _foldable(m.bn):
            _fold_batchnorm([(m.conv, 0)], m.bn)
            m.bn = nn.Identity()
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if _is_large_depthwise(child):
                setattr(parent, name, TiledDepthwiseConv2d(child))


def _is_same(size: int, k: int, s: int, p: int, out: int) -> bool:
    if out != math.ceil(size / s):
        return False
    total = max((out - 1) * s + k - size, 0)
    return total // 2 == p and total - total // 2 == p


def lower(model: nn.Module, target: str, *, int8: bool = True, tf_same_kernels: bool = False,
          example: torch.Tensor | None = None) -> nn.Module:
    """A rewritten copy of `model` for `target` ('tflite' | 'executorch' | 'coreml'); same function in float.

    `int8=False` keeps native float forms (HARD_SWISH is fastest in float).
    `tf_same_kernels`: replace the PAD before stride-2 convs by grown TF-SAME kernels (TFLite only). Off by
    default: measured on MobileNetV3-Small with XNNPACK, the PAD ops are delegated and cheap while 4×4 / 6×6
    depthwise kernels fall off XNNPACK's fast 3×3 / 5×5 paths — int8 1.42 → 2.41 ms, float 2.24 → 2.95 ms
    (1 thread, CPU time). Use it for delegates that cannot run PAD.
    `example`: an input (its shape is used) for rewrites that must know a tensor's width; without it a
    224 px, then a 64 px image is tried. The int8 space-to-depth stem is planned for the example's size and is
    left out without one.
    """
    if target not in TARGETS:
        raise LwdeployError(f"unknown lowering target {target!r}", f"choose from {', '.join(TARGETS)}")
    was_training = model.training
    out = copy.deepcopy(model).eval()
    if target == "coreml":
        # Core ML's converter maps hard-swish/hard-sigmoid to its own ops; nothing here is measured to help.
        return out.train(was_training)
    _fold_se_gates(out)
    # ExecuTorch's XNNPACK runs torch's own hard-swish in int8 (module docstring); LiteRT's does not
    _replace_activations(out, int8 and target != "executorch")
    _fold_batchnorms_after_cat(out)
    _tile_large_depthwise(out)
    _replace_modules(out, _is_depthwise_upsample, DepthwiseUpsample)
    if int8:
        _space_to_depth_stem(out, example)
    if target == "executorch":
        _xnnpack_layernorms(out)
        if int8:
            _pools_to_depthwise(out, [m for m in out.modules() if _is_conv_like_avg_pool(m)], example)
        else:
            _replace_padded_avg_pools(out, True, IncludePadAvgPool2d)
    if target == "tflite":
        _fold_explicit_pads(out)
        if not int8:
            _replace_padded_avg_pools(out, False, ExcludePadAvgPool2d)
            # a 1×1 pool is a strided subsample (EdgeViT's sampler); LiteRT's XNNPACK delegate takes no 1×1
            # AVERAGE_POOL_2D, so each split the float graph (int8 writes every small pool as a conv already)
            _pools_to_depthwise(out, [m for m in out.modules() if _is_conv_like_avg_pool(m) and _pool_taps(m) == 1],
                                example)
            # litert-torch writes a BN it cannot fold as SUB + MUL (+ its ReLU): as a 1×1 depthwise conv it is one
            # op with the ReLU fused (CondenseNet's 73 pre-activation BNs, DiCENet's 16; int8 does this on the graph)
            for path in _standalone_batchnorms(out, example):
                parent, _, name = path.rpartition(".")
                holder = out.get_submodule(parent) if parent else out
                setattr(holder, name, BatchNormDepthwise(getattr(holder, name)))
        if tf_same_kernels:
            _same_pad_convs(out)
    return out.train(was_training)


def rewrites(model: nn.Module) -> dict[str, list[str]]:
    """{form: module paths} of the modules `lower` put in (this file's classes; not those inside one), for the
    manifest: which blocks of the exported graph are not the PyTorch model's own forms. Folds that change only
    weights (BatchNorms into convs, SE +3 into a bias) leave no module and are not listed."""
    out: dict[str, list[str]] = {}
    inside: list[str] = []
    for path, m in model.named_modules():
        if type(m).__module__ != __name__ or any(path.startswith(p + ".") for p in inside):
            continue
        inside.append(path)
        out.setdefault(type(m).__name__, []).append(path)
    return out


def _fold_se_gates(model: nn.Module) -> None:
    """SqueezeExcite with a hard-sigmoid gate: +3 into fc2's bias, gate → relu6·⅙."""
    for m in model.modules():
        if (isinstance(m, layers.SqueezeExcite) and isinstance(m.gate, (layers.HardSigmoid, nn.Hardsigmoid))
                and isinstance(m.fc2, nn.Conv2d)):
            fc2 = m.fc2
            if fc2.bias is None:
                fc2.bias = nn.Parameter(torch.zeros(fc2.out_channels, dtype=fc2.weight.dtype))
            with torch.no_grad():
                fc2.bias.add_(3.0)
            m.gate = ScaledReLU6()


def _replace_activations(model: nn.Module, decompose_hardswish: bool) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            new = None
            if isinstance(child, (layers.HardSwish, nn.Hardswish)):
                new = QuantHardSwish() if decompose_hardswish else nn.Hardswish()
            elif isinstance(child, (layers.HardSigmoid, nn.Hardsigmoid)):
                new = QuantHardSigmoid()
            elif isinstance(child, nn.Hardtanh) and not isinstance(child, nn.ReLU6) and \
                    (child.min_val, child.max_val) == (0.0, 6.0):
                new = nn.ReLU6()
            if new is not None:
                setattr(parent, name, new)


def _fold_explicit_pads(model: nn.Module) -> None:
    """nn.ZeroPad2d(p) (symmetric) right before a zero-padded Conv2d in a Sequential → conv padding += p."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            pad, conv = seq._modules[a], seq._modules[b]
            if not (isinstance(pad, (nn.ZeroPad2d, nn.ConstantPad2d)) and isinstance(conv, nn.Conv2d)):
                continue
            if isinstance(pad, nn.ConstantPad2d) and pad.value != 0:
                continue
            left, right, top, bottom = pad.padding
            if left != right or top != bottom or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            conv.padding = (conv.padding[0] + top, conv.padding[1] + left)
            seq._modules[a] = nn.Identity()


def _is_padded_avg_pool(m: nn.Module, count_include_pad: bool) -> bool:
    return (type(m) is nn.AvgPool2d and m.count_include_pad == count_include_pad and not m.ceil_mode
            and m.divisor_override is None and m.padding not in (0, (0, 0)))


def _is_conv_like_avg_pool(m: nn.Module) -> bool:
    """An nn.AvgPool2d that equals a depthwise conv of ≤ 25 taps (or a padded one that counts its padding).

    XNNPACK has no int8 average pooling: ExecuTorch ran CondenseNet's 2×2 transition pools in float between
    int8↔float Converts. A global pool (> 25 taps) stays: as a conv it would be an IGEMM."""
    if type(m) is not nn.AvgPool2d or m.ceil_mode or m.divisor_override is not None:
        return False
    if m.padding in (0, (0, 0)):
        return _pool_taps(m) <= 25
    return m.count_include_pad


def _pool_taps(m: nn.AvgPool2d) -> int:
    k = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
    return k[0] * k[1]


class BatchNormDepthwise(nn.Conv2d):
    """An eval-mode BatchNorm2d as the 1×1 depthwise conv it is: weight γ/√(σ² + ε), bias β − μ·γ/√(σ² + ε)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__(bn.num_features, bn.num_features, 1, groups=bn.num_features, bias=False)
        with torch.no_grad():
            self.weight.fill_(1.0)                  # the identity conv, then torch's conv-BN fold (_fold_batchnorm)
        _fold_batchnorm([(self, 0)], bn)


def _standalone_batchnorms(model: nn.Module, example: torch.Tensor | None) -> list[str]:
    """Module paths of the eval-mode BatchNorm2ds that no conv feeds alone (a pre-activation BN after a cat, a BN
    on a conv that others read too), found on the exported graph: a module does not know what feeds it. Only
    when some BN is not the next sibling of a conv (ConvBNAct's are, and then no export is spent)."""
    from lwdeploy.quantization.batchnorm_fold import _CONVS, _eval_batchnorms
    from lwdeploy.quantization.capture import capture
    from lwdeploy.quantization.keep_float import _node_paths

    after_conv = set()
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (_, before), (name, child) in zip(children, children[1:]):
            if isinstance(before, nn.Conv2d) and type(child) is nn.BatchNorm2d:
                after_conv.add(f"{parent_name}.{name}" if parent_name else name)
    if not any(type(m) is nn.BatchNorm2d and m.track_running_stats and name not in after_conv
               for name, m in model.named_modules()):
        return []
    if example is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        example = torch.zeros(1, first.in_channels if first is not None else 3, 224, 224)
    try:
        graph = capture(model, example)
    except Exception:  # noqa: BLE001 — a model torch.export cannot trace: its BNs stay as they are
        return []
    paths = []
    for bn in _eval_batchnorms(graph):
        source = bn.args[0]
        if isinstance(source, torch.fx.Node) and source.target in _CONVS and len(source.users) == 1:
            continue                                      # the converter folds it into that conv
        names = _node_paths(bn)
        if names and type(model.get_submodule(names[-1])) is nn.BatchNorm2d:
            paths.append(names[-1])
    return list(dict.fromkeys(paths))


def _replace_padded_avg_pools(model: nn.Module, count_include_pad: bool, form) -> None:
    """Each plain padded nn.AvgPool2d with this `count_include_pad` → `form(pool)`."""
    _replace_modules(model, lambda m: _is_padded_avg_pool(m, count_include_pad), form)


def _pools_to_depthwise(model: nn.Module, pools: list[nn.Module], example: torch.Tensor | None) -> None:
    """Each of `pools` → the `AvgPoolDepthwiseConv` it equals (its width read in one forward pass)."""
    channels = input_channels(model, pools, example)
    _replace_modules(model, lambda m: m in channels, lambda pool: AvgPoolDepthwiseConv(pool, channels[pool]))


def _replace_modules(model: nn.Module, predicate, form) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if predicate(child):
                setattr(parent, name, form(child))


def input_channels(model: nn.Module, modules: list[nn.Module], example: torch.Tensor | None) -> dict[nn.Module, int]:
    """{module: channels of its input}, read in one forward pass of zeros (a pool does not know its width):
    `example`'s shape, else 224 then 64 px (DiCENet runs only at the size it was built for). A model that
    runs at none of them keeps those modules as they are (empty result). A module called on several widths
    (one pool object reused) is left out: no single conv replaces it."""
    if not modules:
        return {}
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    cin = first.in_channels if first is not None else 3
    shapes = [tuple(example.shape)] if example is not None else [(1, cin, 224, 224), (1, cin, 64, 64)]
    seen: dict[nn.Module, set[int]] = {}

    def record(mod, args) -> None:  # returns None: a pre-hook's return value would replace the input
        seen.setdefault(mod, set()).add(int(args[0].shape[1]))

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    try:
        for shape in shapes:
            try:
                with torch.no_grad():
                    model(torch.zeros(shape))
                return {m: next(iter(widths)) for m, widths in seen.items() if len(widths) == 1}
            except Exception:  # noqa: BLE001 — an input this model refuses: try the next size
                seen.clear()
        return {}
    finally:
        for h in hooks:
            h.remove()


def _same_pad_convs(model: nn.Module) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Conv2d and any(s > 1 for s in child.stride) and any(p > 0 for p in child.padding)
                    and not isinstance(child.padding, str)):
                setattr(parent, name, TFSameConv2d.from_conv(child))
