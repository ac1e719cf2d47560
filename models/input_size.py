"""Which input sizes a model runs at.

Unpadded stems and pools shrink the feature map by a fixed amount per stage, so some nets have a smallest input
(SqueezeNet 1.0: 35 px; its third max-pool gets 2×2 at 32 px). A user asking for a smaller size should hear
that number, not a max_pool2d traceback.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def forward_error(model: nn.Module, resolution: int, in_channels: int = 3) -> str | None:
    """None if `model` runs on a (1, C, r, r) input, else the first line of the error it raised."""
    was_training = model.training
    model.eval()  # train-mode BatchNorm would also refuse a 1×1 map at batch 1
    try:
        model(torch.zeros(1, in_channels, resolution, resolution))
        return None
    except RuntimeError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        model.train(was_training)


def smallest_resolution(model: nn.Module, lo: int, hi: int, in_channels: int = 3) -> int | None:
    """The smallest r in [lo, hi] the model runs at, or None if it fails at hi too.

    Binary search: a net that runs at r runs at every larger size (each stage's output only grows with its
    input), and every probe is at most `hi` px, so this costs ~log2(hi − lo) small forwards.
    """
    if forward_error(model, hi, in_channels) is not None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if forward_error(model, mid, in_channels) is None:
            hi = mid
        else:
            lo = mid + 1
    return hi
