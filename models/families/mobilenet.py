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
    "mobilenet_v2_140": dict(params_m=6.9, macs_m=585, top1=74.7, kwargs=dict(width=1.4),
                             note="the paper says 6.9 M; the TF-slim 1.4 network (head 1792, built here) has "
                                  "6.1 M; MACs agree"),
}, mobilenet_v2, **_V2)

_V3 = dict(family="MobileNetV3", year=2019, paper="Searching for MobileNetV3 (Howard et al., ICCV 2019)",
           resolution=224)
register_variants({
    "mobilenet_v3_large_100": dict(params_m=5.4, macs_m=219, top1=75.2, kwargs=dict(arch="large")),
    "mobilenet_v3_small_100": dict(params_m=2.5, macs_m=56, top1=67.4, kwargs=dict(arch="small")),
}, mobilenet_v3, **_V3)

# MobileNetV1 (Howard et al. 2017, Table 1): 13 depthwise-separable blocks, BN + ReLU after both convs,
# no residuals, no head conv. The width multiplier α scales every layer, the stem included.
MOBILENET_V1 = [
    ["ds_r1_k3_s1_c64"],
    ["ds_r1_k3_s2_c128", "ds_r1_k3_s1_c128"],
    ["ds_r1_k3_s2_c256", "ds_r1_k3_s1_c256"],
    ["ds_r1_k3_s2_c512", "ds_r5_k3_s1_c512"],
    ["ds_r1_k3_s2_c1024", "ds_r1_k3_s1_c1024"],
]
MOBILENET_V1 = [[b + "_pwa_noskip" for b in stage] for stage in MOBILENET_V1]
# SE-MobileNet (SENet paper, Table 4): an SE (reduction 16, sigmoid gate) on every block's output
SE_MOBILENET = [[b + "_se0.0625_sea" for b in stage] for stage in MOBILENET_V1]


def mobilenet_v1(num_classes: int = 1000, width: float = 1.0, se: bool = False, **kw):
    return build_mbconv(SE_MOBILENET if se else MOBILENET_V1, num_classes=num_classes, width=width, stem_ch=32,
                        act="relu6", head_ch=0, se_gate="sigmoid", se_act="relu", se_divisor=1, dropout=0.001,
                        **kw)


_V1 = dict(family="MobileNetV1", year=2017, resolution=224, paper="MobileNets: Efficient Convolutional Neural "
           "Networks for Mobile Vision Applications (Howard et al., 2017)")
register_variants({
    "mobilenet_v1_100": dict(params_m=4.2, macs_m=569, top1=70.6, kwargs=dict(width=1.0)),
    "mobilenet_v1_075": dict(params_m=2.6, macs_m=325, top1=68.4, kwargs=dict(width=0.75)),
    "mobilenet_v1_050": dict(params_m=1.3, macs_m=149, top1=63.7, kwargs=dict(width=0.5)),
    "mobilenet_v1_025": dict(params_m=0.5, macs_m=41, top1=50.6,
                             note="paper rounds params to 0.5 M (counted 0.47 M)", kwargs=dict(width=0.25)),
}, mobilenet_v1, **_V1)

register_variants({
    "se_mobilenet_100": dict(params_m=4.7, macs_m=572, top1=74.7, kwargs=dict(width=1.0, se=True)),
}, mobilenet_v1, family="SENet", year=2018, resolution=224,
    paper="Squeeze-and-Excitation Networks (Hu et al., CVPR 2018), SE-MobileNet (Table 4)")
