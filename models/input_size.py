"""Which input sizes a model runs at.

Unpadded stems and pools shrink the feature map by a fixed amount per stage, so some nets have a smallest input
(SqueezeNet 1.0: 35 px; its third max-pool gets 2×2 at 32 px), others need sizes of some form (NASNet,
MobileViT). A user asking for a size the model cannot take should hear the next one it can, not a traceback.
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


def next_resolution(model: nn.Module, lo: int, hi: int, in_channels: int = 3) -> int | None:
    """The smallest r in [lo, hi] the model runs at, or None.

    A linear scan, not a bisection: sizes that work are not always an interval. NASNet's cells concatenate
    branches that round odd sizes differently (it runs at 32 px, not at 33), MobileViT folds its maps into 2×2
    patches (multiples of 32 px only). Probes are cheap at the small sizes this is asked about.
    """
    for r in range(lo, hi + 1):
        if forward_error(model, r, in_channels) is None:
            return r
    return None
