"""MNASNet-A1 and -B1 (Tan et al., CVPR 2019): platform-aware NAS; block strings as in the TF reference."""

from __future__ import annotations

from ..mbconv import build_mbconv
from ..registry import register_variants

MNASNET_A1 = [
    ["ds_r1_k3_s1_e1_c16_noskip"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k5_s2_e3_c40_se0.25"],
    ["ir_r4_k3_s2_e6_c80"],
    ["ir_r2_k3_s1_e6_c112_se0.25"],
    ["ir_r3_k5_s2_e6_c160_se0.25"],
    ["ir_r1_k3_s1_e6_c320"],
]
MNASNET_B1 = [
    ["ds_r1_k3_s1_c16_noskip"],
    ["ir_r3_k3_s2_e3_c24"],
    ["ir_r3_k5_s2_e3_c40"],
    ["ir_r3_k5_s2_e6_c80"],
    ["ir_r2_k3_s1_e6_c96"],
    ["ir_r4_k5_s2_e6_c192"],
    ["ir_r1_k3_s1_e6_c320_noskip"],
]


def mnasnet(arch: str = "a1", num_classes: int = 1000, width: float = 1.0, **kw):
    # SE squeeze = ¼ of the block's input channels, ReLU inside, sigmoid gate (TF reference)
    return build_mbconv(MNASNET_A1 if arch == "a1" else MNASNET_B1, num_classes=num_classes, width=width,
                        stem_ch=32, act="relu", head_ch=1280, head_bias=False, head_bn=True, head_pool_first=False,
                        se_gate="sigmoid", se_act="relu", se_from_expanded=False, se_divisor=1, **kw)


register_variants({
    "mnasnet_a1": dict(params_m=3.9, macs_m=312, top1=75.2, kwargs=dict(arch="a1")),
    "mnasnet_b1": dict(params_m=4.4, macs_m=315, top1=74.5, kwargs=dict(arch="b1")),
}, mnasnet, family="MNASNet", year=2019, resolution=224,
    paper="MnasNet: Platform-Aware Neural Architecture Search for Mobile (Tan et al., CVPR 2019)")
