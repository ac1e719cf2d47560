"""Which layers a forward pass calls first, and which convolutions read the input image itself (not a copy or
a transform of it).

Two passes need the stem conv: Core ML folds 1/std into its weights (exact only if it reads the raw input),
and ExecuTorch int8 keeps a small one float (quantization/keep_float.py). Module hooks see the very tensor
object passed to forward, so identity with the example tells a true reader from a conv further down. int8's
default weight rounding learns the first layers' rounding (quantization/adaround.py `first_layers`).
"""

from __future__ import annotations

import torch
from torch import nn


def call_order(model: nn.Module, example: torch.Tensor, kinds: tuple[type, ...] = (nn.Conv2d,),
               reading: torch.Tensor | None = None) -> list[str]:
    """Module paths of the `kinds` layers in the order one forward pass of `example` first calls them, each
    once; with `reading`, only those whose input is that very tensor object."""
    order: list[str] = []

    def note(name: str):
        def hook(_module, args):
            if name not in order and (reading is None or (args and args[0] is reading)):
                order.append(name)
        return hook

    handles = [m.register_forward_pre_hook(note(name)) for name, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def convs_reading_input(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module paths of the Conv2d layers whose input is `example` itself, in call order, each once."""
    return call_order(model, example, (nn.Conv2d,), reading=example)


def conv_reading_input_alone(model: nn.Module, example: torch.Tensor) -> str | None:
    """Module path of THE conv that reads `example` itself, or None when none or several do (then no single
    layer is the stem)."""
    readers = convs_reading_input(model, example)
    return readers[0] if len(readers) == 1 else None
