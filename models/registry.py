"""Zoo registry: every variant with its paper metadata, next to the factory that builds it.

Factories register themselves with @register_model(...). The metadata is the paper's own numbers
(params, MACs at the paper's resolution, ImageNet top-1); tests recount params/MACs and compare.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Callable

from torch import nn

from lwdeploy.errors import LwdeployError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite / TF-slim models expect inputs in [-1, 1]
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    year: int
    paper: str
    resolution: int                       # the paper's input size (square)
    params_m: float | None                # paper: millions of parameters (1000 classes); None: not reported
    macs_m: float | None                  # paper: millions of multiply-adds at `resolution`; None: not reported
    top1: float | None                    # paper: ImageNet top-1 (%)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    note: str = ""                        # why our count differs from the paper, where it does
    pretrained: str = ""                  # source of real weights, if any (see models/pretrained.py)
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["tags"] = list(self.mean), list(self.std), list(self.tags)
        return d


@dataclass(frozen=True)
class Entry:
    info: ModelInfo
    factory: Callable[..., nn.Module]


_REGISTRY: dict[str, Entry] = {}


def register_model(name: str, **meta) -> Callable:
    """Decorator: register `factory(num_classes=..., width=..., **kw)` under `name` with paper metadata."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = Entry(ModelInfo(name=name, **meta), factory)
        return factory

    return wrap


def register_variants(variants: dict[str, dict], factory: Callable[..., nn.Module], **common) -> None:
    """Register several variants of one family: {name: {meta..., 'kwargs': {...}}}."""
    for name, meta in variants.items():
        meta = dict(meta)
        kwargs = meta.pop("kwargs", {})
        register_model(name, **{**common, **meta})(_bind(factory, kwargs))


def _bind(factory: Callable[..., nn.Module], bound: dict) -> Callable[..., nn.Module]:
    def build(**kw):
        return factory(**{**bound, **kw})

    build.__name__ = getattr(factory, "__name__", "build")
    return build


def get_entry(name: str) -> Entry:
    _ensure_loaded()
    # short names pick the 1.0× variant: "ghostnet" → "ghostnet_100"
    for candidate in (name, f"{name}_100", name.replace("-", "_"), f"{name.replace('-', '_')}_100"):
        if candidate in _REGISTRY:
            return _REGISTRY[candidate]
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `lwdeploy models` to list the zoo"
    raise LwdeployError(f"unknown model {name!r}", hint)


def all_entries() -> list[Entry]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def _ensure_loaded() -> None:
    # Importing the family modules runs their @register_model decorators.
    from lwdeploy.models import families  # noqa: F401
