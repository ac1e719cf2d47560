"""FBNet-A/B/C (Wu et al., CVPR 2019) and ChamNet-A/B (Dai et al., CVPR 2019) — both from Facebook's
mobile_cv model definitions, as block strings. FBNet's `skip` choices are simply absent blocks; `k5_g2`
blocks (expansion 1) use a 2-group pointwise projection (`gp2`)."""

from __future__ import annotations

from ..mbconv import build_mbconv
from ..registry import register_variants

FBNET_A = [
    ["ir_r1_k3_s2_e3_c24", "ir_r1_k3_s1_e1_c24"],
    ["ir_r1_k5_s2_e6_c32", "ir_r1_k3_s1_e3_c32", "ir_r1_k5_s1_e1_c32", "ir_r1_k3_s1_e3_c32"],
    ["ir_r1_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r1_k5_s1_e1_c64_gp2", "ir_r1_k5_s1_e6_c64",
     "ir_r1_k3_s1_e6_c112", "ir_r1_k5_s1_e1_c112_gp2", "ir_r1_k5_s1_e3_c112", "ir_r1_k3_s1_e1_c112_gp2"],
    ["ir_r1_k5_s2_e6_c184", "ir_r1_k5_s1_e6_c184", "ir_r1_k5_s1_e3_c184", "ir_r1_k5_s1_e6_c184",
     "ir_r1_k5_s1_e6_c352"],
]
FBNET_B = [
    ["ir_r1_k3_s1_e1_c16"],
    ["ir_r1_k3_s2_e6_c24", "ir_r1_k5_s1_e1_c24", "ir_r2_k3_s1_e1_c24"],
    ["ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k3_s1_e6_c32", "ir_r1_k5_s1_e6_c32"],
    ["ir_r2_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r1_k5_s1_e6_c112", "ir_r1_k3_s1_e1_c112",
     "ir_r1_k5_s1_e1_c112", "ir_r1_k5_s1_e3_c112"],
    ["ir_r1_k5_s2_e6_c184", "ir_r1_k5_s1_e1_c184", "ir_r2_k5_s1_e6_c184", "ir_r1_k3_s1_e6_c352"],
]
FBNET_C = [
    ["ir_r1_k3_s1_e1_c16"],
    ["ir_r1_k3_s2_e6_c24", "ir_r2_k3_s1_e1_c24"],
    ["ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k5_s1_e6_c32", "ir_r1_k3_s1_e6_c32"],
    ["ir_r1_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r2_k5_s1_e6_c64", "ir_r3_k5_s1_e6_c112",
     "ir_r1_k5_s1_e3_c112"],
    ["ir_r4_k5_s2_e6_c184", "ir_r1_k3_s1_e6_c352"],
]
CHAMNET_A = [
    ["ir_r1_k3_s1_e1_c24"],
    ["ir_r2_k3_s2_e4_c40"],
    ["ir_r3_k3_s2_e6_c48"],
    ["ir_r4_k3_s2_e4_c96", "ir_r3_k3_s1_e4_c160"],
    ["ir_r3_k3_s2_e4_c248", "ir_r1_k3_s1_e6_c480"],
]
CHAMNET_B = [
    ["ir_r1_k3_s1_e1_c16"],
    ["ir_r2_k3_s2_e5_c40"],
    ["ir_r3_k3_s2_e6_c40"],
    ["ir_r3_k3_s2_e6_c92", "ir_r3_k3_s1_e6_c104"],
    ["ir_r3_k3_s2_e5_c200", "ir_r1_k3_s1_e6_c384"],
]
_ARCHS = {"fbnet_a": (FBNET_A, 16, 1504), "fbnet_b": (FBNET_B, 16, 1984), "fbnet_c": (FBNET_C, 16, 1984),
          "chamnet_a": (CHAMNET_A, 32, 2016), "chamnet_b": (CHAMNET_B, 24, 1984)}


def fbnet(arch: str = "fbnet_c", num_classes: int = 1000, width: float = 1.0, **kw):
    stages, stem, head = _ARCHS[arch]
    return build_mbconv(stages, num_classes=num_classes, width=width, stem_ch=stem, act="relu", head_ch=head,
                        head_bias=False, head_bn=True, head_pool_first=False, **kw)


_FB = dict(family="FBNet", year=2019, resolution=224, paper="FBNet: Hardware-Aware Efficient ConvNet Design via "
           "Differentiable Neural Architecture Search (Wu et al., CVPR 2019)")
register_variants({
    "fbnet_a": dict(params_m=4.3, macs_m=249, top1=73.0, kwargs=dict(arch="fbnet_a")),
    "fbnet_b": dict(params_m=4.5, macs_m=295, top1=74.1, kwargs=dict(arch="fbnet_b"),
                    note="built from Facebook's released mobile_cv definition, which counts 4.8 M params "
                         "(the paper's table says 4.5 M); MACs agree"),
    "fbnet_c": dict(params_m=5.5, macs_m=375, top1=74.9, kwargs=dict(arch="fbnet_c")),
}, fbnet, **_FB)

_CHAM = dict(family="ChamNet", year=2019, resolution=224, paper="ChamNet: Towards Efficient Network Design "
             "through Platform-Aware Model Adaptation (Dai et al., CVPR 2019)")
register_variants({
    "chamnet_a": dict(params_m=None, macs_m=553, top1=75.4, kwargs=dict(arch="chamnet_a"),
                      note="the paper reports no parameter count"),
    "chamnet_b": dict(params_m=None, macs_m=323, top1=73.8, kwargs=dict(arch="chamnet_b"),
                      note="the paper reports no parameter count; Facebook's released cham_b definition (built "
                           "here) counts ~437 M MACs, not the paper's 323 M — the paper's own B is not published"),
}, fbnet, **_CHAM)
