"""Count parameters and multiply-accumulates the way papers do: conv and linear layers, 1 MAC = 1 multiply-add."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int | tuple[int, int], in_ch: int = 3) -> int:
    """MACs of one forward pass at `resolution`, summed over Conv2d/ConvTranspose2d/Linear (and attention matmuls
    via hooks).

    Other ops (BN, activations, adds, pooling) are left out, as in the papers we compare with.
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def deconv_hook(m: nn.ConvTranspose2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += inp[0].numel() * (m.out_channels // m.groups) * kh * kw   # every input pixel hits k×k outputs

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(deconv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif hasattr(m, "extra_macs"):  # modules with matmuls of their own (attention) report them
            hooks.append(m.register_forward_hook(lambda mod, i, o: _add_extra(mod, i, o)))
    extra = []

    def _add_extra(mod, i, o):
        extra.append(mod.extra_macs(i, o))

    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_ch, h, w))
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return total + int(sum(extra))


def count_on_meta(factory, resolution: int, **kwargs) -> tuple[int, int]:
    """(params, MACs) of `factory(**kwargs)` built on the meta device: shapes only, no memory, no init cost —
    the whole zoo counts in seconds. Parameter counts and hook-based MACs need shapes only."""
    with torch.device("meta"):
        model = factory(**kwargs)
        params = count_params(model)
        macs = count_macs(model, resolution)
    return params, macs
