"""MixNet-S/M (Tan & Le, BMVC 2019): mixed depthwise kernels (k3.5.7…) and 2-group 1×1 convs (ga2/gp2)."""

from __future__ import annotations

from ..mbconv import build_mbconv
from ..registry import register_variants

MIXNET_S = [
    ["ds_r1_k3_s1_e1_c16"],
    ["ir_r1_k3_ga2_gp2_s2_e6_c24", "ir_r1_k3_ga2_gp2_s1_e3_c24"],
    ["ir_r1_k3.5.7_s2_e6_c40_se0.5_sw", "ir_r3_k3.5_ga2_gp2_s1_e6_c40_se0.5_sw"],
    ["ir_r1_k3.5.7_gp2_s2_e6_c80_se0.25_sw", "ir_r2_k3.5_gp2_s1_e6_c80_se0.25_sw"],
    ["ir_r1_k3.5.7_ga2_gp2_s1_e6_c120_se0.5_sw", "ir_r2_k3.5.7.9_ga2_gp2_s1_e3_c120_se0.5_sw"],
    ["ir_r1_k3.5.7.9.11_s2_e6_c200_se0.5_sw", "ir_r2_k3.5.7.9_gp2_s1_e6_c200_se0.5_sw"],
]
MIXNET_M = [
    ["ds_r1_k3_s1_e1_c24"],
    ["ir_r1_k3.5.7_ga2_gp2_s2_e6_c32", "ir_r1_k3_ga2_gp2_s1_e3_c32"],
    ["ir_r1_k3.5.7.9_s2_e6_c40_se0.5_sw", "ir_r3_k3.5_ga2_gp2_s1_e6_c40_se0.5_sw"],
    ["ir_r1_k3.5.7_s2_e6_c80_se0.25_sw", "ir_r3_k3.5.7.9_ga2_gp2_s1_e6_c80_se0.25_sw"],
    ["ir_r1_k3_s1_e6_c120_se0.5_sw", "ir_r3_k3.5.7.9_ga2_gp2_s1_e3_c120_se0.5_sw"],
    ["ir_r1_k3.5.7.9_s2_e6_c200_se0.5_sw", "ir_r3_k3.5.7.9_gp2_s1_e6_c200_se0.5_sw"],
]


def mixnet(arch: str = "s", num_classes: int = 1000, width: float = 1.0, **kw):
    stages, stem = (MIXNET_S, 16) if arch == "s" else (MIXNET_M, 24)
    return build_mbconv(stages, num_classes=num_classes, width=width, stem_ch=stem, act="relu", head_ch=1536,
                        head_bias=False, head_bn=True, head_pool_first=False, se_gate="sigmoid", se_act="swish",
                        se_from_expanded=False, se_divisor=1, **kw)


register_variants({
    "mixnet_s": dict(params_m=4.1, macs_m=256, top1=75.8, kwargs=dict(arch="s")),
    "mixnet_m": dict(params_m=5.0, macs_m=360, top1=77.0, kwargs=dict(arch="m")),
}, mixnet, family="MixNet", year=2019, resolution=224,
    paper="MixConv: Mixed Depthwise Convolutional Kernels (Tan & Le, BMVC 2019)")
