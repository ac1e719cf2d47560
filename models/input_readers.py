"""Which convolutions read a model's input image itself (not a copy or a transform of it).

Two passes need the stem conv: Core ML folds 1/std into its weights (exact only if it reads the raw input),
and ExecuTorch int8 keeps a small one float (quantization/keep_float.py). Module hooks see the very tensor
object passed to forward, so identity with the example tells a true reader from a conv further down.
"""

from __future__ import annotations

import torch
from torch import nn


def convs_reading_input(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module paths of the Conv2d layers whose input is `example` itself, in call order, each once."""
    readers: list[str] = []

    def note(name: str):
        def hook(_module, args):
            if args and args[0] is example and name not in readers:
                readers.append(name)
        return hook

    handles = [m.register_forward_pre_hook(note(name)) for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return readers
