"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019) as block-string data."""

from __future__ import annotations

from ..mbconv import build_mbconv
from ..registry import register_variants

MOBILENET_V2 = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]

MOBILENET_V3_LARGE = [
    ["ds_r1_k3_s1_c16_nre"],
    ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
    ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
    ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
    ["ir_r2_k3_s1_e6_c112_se0.25"],
    ["ir_r3_k5_s2_e6_c160_se0.25"],
    ["cn_r1_k1_s1_c960"],
]

MOBILENET_V3_SMALL = [
    ["ds_r1_k3_s2_c16_se0.25_nre"],
    ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
    ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
    ["ir_r2_k5_s1_e3_c48_se0.25"],
    ["ir_r3_k5_s2_e6_c96_se0.25"],
    ["cn_r1_k1_s1_c576"],
]


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, **kw):
    return build_mbconv(MOBILENET_V2, num_classes=num_classes, width=width, stem_ch=32, act="relu6",
                        head_ch=1280, head_bias=False, head_bn=True, head_pool_first=False, **kw)


def mobilenet_v3(arch: str = "large", num_classes: int = 1000, width: float = 1.0, **kw):
    stages, head = (MOBILENET_V3_LARGE, 1280) if arch == "large" else (MOBILENET_V3_SMALL, 1024)
    # SE squeeze width is a multiple of 8 of expanded/4; the gate is hard-sigmoid (paper, sec. 5.3)
    return build_mbconv(stages, num_classes=num_classes, width=width, stem_ch=16, act="hswish",
                        head_ch=head, head_act="hswish", scale_head=False, se_gate="hsigmoid",
                        se_act="relu", **kw)


_V2 = dict(family="MobileNetV2", year=2018, paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks "
           "(Sandler et al., CVPR 2018)", resolution=224)
register_variants({
    "mobilenet_v2_100": dict(params_m=3.4, macs_m=300, top1=72.0, kwargs=dict(width=1.0)),
    "mobilenet_v2_140": dict(params_m=6.9, macs_m=585, top1=74.7, kwargs=dict(width=1.4)),
}, mobilenet_v2, **_V2)

_V3 = dict(family="MobileNetV3", year=2019, paper="Searching for MobileNetV3 (Howard et al., ICCV 2019)",
           resolution=224)
register_variants({
    "mobilenet_v3_large_100": dict(params_m=5.4, macs_m=219, top1=75.2, kwargs=dict(arch="large")),
    "mobilenet_v3_small_100": dict(params_m=2.5, macs_m=56, top1=67.4, kwargs=dict(arch="small")),
}, mobilenet_v3, **_V3)
