"""lwdeploy.models — the zoo: `create(name, **overrides)`, `list_models()`, `get_info(name)`."""

from __future__ import annotations

from torch import nn

from .complexity import count_macs, count_params
from .registry import ModelInfo, all_entries, get_entry


def list_models(pattern: str | None = None) -> list[str]:
    """Names of every registered variant (optionally those containing `pattern`)."""
    names = [e.info.name for e in all_entries()]
    return [n for n in names if pattern is None or pattern in n]


def get_info(name: str) -> ModelInfo:
    return get_entry(name).info


def create(name: str, *, pretrained: bool = False, num_classes: int | None = None, **overrides) -> nn.Module:
    """Build zoo model `name` in eval mode. `overrides` go to the family factory (e.g. width=0.75)."""
    entry = get_entry(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model = entry.factory(**overrides)
    if pretrained:
        from .pretrained import load_pretrained

        load_pretrained(entry.info, model)
    return model.eval()


__all__ = ["ModelInfo", "count_macs", "count_params", "create", "get_info", "list_models"]
