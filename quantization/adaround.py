"""AdaRound: learned up/down rounding of int8 weights (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020).

Rounding each weight to the NEAREST grid point minimises the weight error, not the layer's output error:
the errors of a kernel's weights add up on correlated inputs. AdaRound picks, per weight, floor or ceil so
that ||W x − W̃ x||² over calibration inputs is small — a continuous relaxation (rectified sigmoid h(V) in
[0, 1] added to floor(W/s)) optimised with Adam, plus a regulariser that pushes every h to 0 or 1 with an
annealed exponent β (20 → 2), then rounded hard.

Written here because torch 2.13 ships no AdaRound (torch.ao.quantization.experimental is gone; torchao has
none for PT2E int8). We do NOT change how the targets quantize: `adaround(model, calib)` returns a float copy
whose conv/linear weights already lie on the exact grid the PT2E quantizers of every target use — symmetric
per-output-channel int8 on [−127, 127], scale = max(max|W_c| / 127, 2⁻¹²) of the BN-FOLDED weight (PT2E folds
conv → BN before observing). Each channel's largest |W| keeps its ±127 value, so the observer finds the same
scale again and re-quantizes the chosen rounding losslessly, on TFLite, ExecuTorch and Core ML alike.

Cost control (aimed at < 60 s for EfficientNet-Lite0 on 2 cores; measured 80–95 CPU s, see docs/int8.md): the layer's output error is a quadratic
form in the weight error, E||ΔW x||² = Σ_c ΔW_c E[x xᵀ] ΔW_cᵀ, so one float forward pass over the calibration
images collects, per layer, only E[x xᵀ] over `samples` random input patches (D×D per group: 25×25 for a 5×5
depthwise channel); the optimisation then never touches activations (layers wider than `rank` = 256 inputs
are optimised on the top-256 eigen-directions of E[x xᵀ]; the final check uses all of it). Inputs are the float model's (the
paper's simpler variant). Schedule: the paper anneals over 10k+ steps; with a few hundred we start the
regulariser at once (the soft weights start AT the float weights, so there is nothing to warm up) and weight
it more strongly (reg 10 on the mean, the reconstruction term normalised by nearest rounding's error) — on
correlated test inputs this reached 0.13× nearest rounding's error in 300 steps, the paper's λ 0.01 0.88×.
A layer whose learned rounding does not beat nearest rounding keeps nearest rounding.

Bias correction (bias_correction.py) can follow: pass the ORIGINAL model as its `reference`, so it corrects
the mean shift of the rounded weights against the float ones (the rounded weights are already on the grid,
so against themselves the shift would be zero).
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lwdeploy.quantization.bias_correction import QMAX, _bn_after, _folded_weight, int8_weight, weight_scale
from lwdeploy.quantization.calibration import stack_batches
from lwdeploy.quantization.keep_float import under
from lwdeploy.quantization.pt2e import single_thread

ZETA, GAMMA = 1.1, -0.1      # rectified-sigmoid stretch (paper §4.1)


def _bn_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _quad(dw: torch.Tensor, m: torch.Tensor, groups: int, factored: bool) -> torch.Tensor:
    """Σ over output channels of E[(ΔW_c · x)²]: ΔW_c G ΔW_cᵀ with m = G = E[x xᵀ] (groups, D, D), or
    ||ΔW_c F||² with m = F (groups, D, r), F Fᵀ ≈ G."""
    d = dw.reshape(groups, dw.shape[0] // groups, -1)
    return (d @ m).pow(2).sum() if factored else ((d @ m) * d).sum()


def _factor(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """F with F Fᵀ = gram restricted to its `rank` largest eigen-directions: a 1152-wide pointwise conv's
    input spectrum falls off fast, and (ΔW F) costs D·r per channel instead of D²."""
    evals, evecs = torch.linalg.eigh(gram.double())
    return (evecs[..., -rank:] * evals[..., -rank:].clamp_min(0).sqrt().unsqueeze(-2)).float()


def round_layer(*args, **kwargs) -> tuple[torch.Tensor, dict]:
    """`_round_layer` on one intra-op thread: its ops are small, and with 2 threads on this busy 2-core box
    300 steps on a 32×64 weight took 30 s instead of 0.45 s (measured)."""
    with single_thread():
        return _round_layer(*args, **kwargs)


def _round_layer(w: torch.Tensor, gram: torch.Tensor, groups: int = 1, *, iters: int = 300, lr: float = 3e-2,
                reg: float = 10.0, warmup: float = 0.0, rank: int = 256) -> tuple[torch.Tensor, dict]:
    """Learned rounding of one (BN-folded) weight `w`, given its input second moments `gram` (groups, D, D) =
    E[x xᵀ] over calibration patches (D = in-channels per group × kernel area).

    The output error E||(W̃ − W) x||² is a quadratic form in the rounding error, so it is computed exactly from
    `gram` — no mini-batches of activations (depthwise layers, where each channel sees only k² inputs, cost
    almost nothing). It is normalised by nearest rounding's error so that `reg` means the same on every layer.
    Returns (rounded weight on the int8 grid, stats): the output error of nearest and of learned rounding;
    the result is nearest rounding when learning did not beat it."""
    w = w.detach().float()
    gram = gram.float()
    factored = rank < gram.shape[-1]                  # wide layers: optimise on the top-`rank` directions
    m = _factor(gram, rank) if factored else gram
    s = weight_scale(w)
    base = torch.floor(w / s)
    rest = w / s - base
    # the channel maximum stays at ±127 so the observer's scale is unchanged: fix its rounding to nearest
    flat = w.abs().reshape(w.shape[0], -1)
    fixed = torch.zeros_like(flat, dtype=torch.bool)
    fixed[torch.arange(w.shape[0]), flat.argmax(1)] = True
    fixed = fixed.view_as(w)
    near = int8_weight(w)
    nearest_up = (torch.round(w / s) > base).float()
    with torch.no_grad():
        err_nearest = float(_quad(near - w, gram, groups, False))
    norm = max(err_nearest, 1e-30)
    # V initialised so that h(V) equals the fractional part: the soft weight starts at the float weight
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    v = torch.log(p / (1 - p)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)

    def soft_weight(h):
        h = torch.where(fixed, nearest_up, h)
        return torch.clamp(base + h, -QMAX, QMAX) * s

    start = int(warmup * iters)
    for it in range(iters):
        h = _h(v)
        loss = _quad(soft_weight(h) - w, m, groups, factored) / norm
        if it >= start:
            # β anneals 20 → 2: early on only near-decided weights are pushed, late every weight is
            beta = 20 - (20 - 2) * (it - start) / max(1, iters - start)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = soft_weight((v >= 0).float())
        err_learned = float(_quad(learned - w, gram, groups, False))
    stats = {"err_nearest": err_nearest, "err_adaround": err_learned}
    if err_learned >= err_nearest:
        return near, {**stats, "kept": "nearest"}
    return learned, {**stats, "kept": "adaround"}


def _patches(layer: nn.Module, x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` random (image, output position) input patches of `layer` from a batch x → (n, groups, D)."""
    if isinstance(layer, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        idx = torch.randint(0, x.shape[0], (n,), generator=gen)
        return x[idx].unsqueeze(1)
    # gather only the sampled patches (unfolding whole feature maps first cost most of the capture time)
    b, c, hgt, wid = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    ho, wo = (hgt + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wid + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    bi = torch.randint(0, b, (n,), generator=gen)
    oi = torch.randint(0, ho, (n,), generator=gen) * sh
    oj = torch.randint(0, wo, (n,), generator=gen) * sw
    ki = (torch.arange(kh) * dh).repeat_interleave(kw)
    kj = (torch.arange(kw) * dw).repeat(kh)
    rows, cols = oi[:, None] + ki, oj[:, None] + kj                          # (n, kh·kw)
    patches = xp[bi[:, None], :, rows, cols]                                 # (n, kh·kw, C)
    return patches.permute(0, 2, 1).reshape(n, layer.groups, -1)              # unfold's (C, kh, kw) order


@torch.no_grad()
def input_grams(model: nn.Module, layers: dict[str, nn.Module], images: torch.Tensor, samples: int,
                batch: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per layer, E[x xᵀ] (groups, D, D) over `samples` random input patches from the calibration images."""
    gen = torch.Generator().manual_seed(seed)
    per_batch = -(-samples // -(-len(images) // batch))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(path):
        def fn(mod, inputs, _out):
            p = _patches(mod, inputs[0].float(), per_batch, gen).transpose(0, 1)     # (groups, n, D)
            sums[path] = sums.get(path, 0) + p.transpose(1, 2) @ p
            counts[path] = counts.get(path, 0) + p.shape[1]
        return fn

    handles = [m.register_forward_hook(hook(p)) for p, m in layers.items()]
    try:
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    return {p: sums[p] / counts[p] for p in sums}


def first_layers(model: nn.Module, example: torch.Tensor, n: int) -> list[str]:
    """The first `n` conv/linear layers the image passes through (execution order of one forward pass).

    Why these: an early layer's rounding error reaches every layer after it, and the first layers are the
    cheapest to round (small fan-in). On EfficientNet-Lite0 (real weights, 1000 held-out crops, `python
    benchmarks/int8_bench.py --recipes early,nearest`, docs/int8.md) AdaRound on its first 3 layers gave most of
    what AdaRound on all 50 gives, in ~1 s instead of ~65 s: TFLite 94.2 → 95.6 % top-1 agreement, 22.38 → 23.47
    dB (all 50: 95.2 %, 23.77 dB); ExecuTorch 95.3 → 95.9 %, 22.87 → 23.78 dB (all: 96.2 %, 24.21 dB). Its first
    6 were no better than 3 (simulated int8, 23.40 dB both). On ExecuTorch the float RGB stem is one of the 3, so
    2 are learned; counting 3 int8 layers after it measured no better (session 16, the same command with `--targets
    executorch --recipes early`: 95.4 % and 23.63 dB against 95.9 % and 23.78 dB), so the stem still counts."""
    from lwdeploy.models.input_readers import call_order

    return call_order(model, example, (nn.Conv2d, nn.Linear))[:n]


def adaround(model: nn.Module, calib: Iterable[torch.Tensor], *, skip: Iterable[str] = (),
             only: Iterable[str] | None = None, samples: int = 8192, iters: int = 200, seed: int = 0,
             progress=None) -> tuple[nn.Module, dict]:
    """A copy of `model` whose conv/linear weights (BN-folded) carry learned int8 rounding.

    Returns (copy, {layer path: stats}). `skip`: module paths left alone (layers kept in float); `only`: if
    given, just the layers at or under these module paths. `progress(done, total)` is called after each layer."""
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    skip = tuple(skip or ())
    chosen = None if only is None else tuple(only)
    layers = {p: m for p, m in modules.items()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None
              and not (isinstance(m, nn.Conv2d) and m.padding_mode != "zeros")
              and not under(p, skip) and (chosen is None or under(p, chosen))}
    images = stack_batches(calib)
    with single_thread():   # small ops: a second thread only waits (and the machine is shared)
        return _adaround(out, modules, layers, images, samples, iters, seed, progress)


def _adaround(out, modules, layers, images, samples, iters, seed, progress):
    inputs = input_grams(out, layers, images, samples, seed=seed)
    report = {}
    for i, (path, layer) in enumerate(layers.items()):
        if path not in inputs:
            continue                                    # not reached by the forward pass
        bn = _bn_after(path, modules) if isinstance(layer, nn.Conv2d) else None
        folded = _folded_weight(layer, bn)
        groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        rounded, stats = round_layer(folded, inputs.pop(path), groups, iters=iters)
        # back to the unfolded weight: PT2E multiplies by the same BN factor again and lands on the grid
        with torch.no_grad():
            if bn is None:
                layer.weight.copy_(rounded)
            else:
                f = _bn_factor(bn).view(-1, *([1] * (rounded.dim() - 1)))
                layer.weight.copy_(torch.where(f != 0, rounded / torch.where(f != 0, f, 1), layer.weight))
        report[path] = stats
        if progress:
            progress(i + 1, len(layers))
    return out, report
