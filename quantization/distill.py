"""Quantization-aware distillation: a short fine-tune of the calibrated int8 program towards the float model.

Post-training int8 leaves an error spread over the whole network: on EfficientNet-Lite0 no one group of
activations carries it (docs/int8.md), and AdaRound (adaround.py) fixes each layer's rounding on its own,
against float inputs. Here the whole fake-quantized program — every activation on the range calibration
chose, every weight on its int8 grid — learns to reproduce the float model's outputs on the calibration
images (the teacher is the float model itself, so no labels are needed and the objective is the one the
fidelity report measures).

`distill(prepared, teacher, images)` works on the graph `prepare_pt2e` returned, after calibration and
before `convert_pt2e`:
- every weight observer is swapped for a fake-quantizer (symmetric per channel, its scale recomputed from the
  current weight each step, as the observer would) on weight + δ·s₀, where δ is learned in units of the
  channel's int8 step s₀ at the start: one learning rate fits depthwise and pointwise layers alike, and δ
  of a few tenths re-decides a weight's rounding;
- every activation observer is swapped for a fake-quantizer on the qparams it computed from calibration;
- gradients pass straight through the rounding (torch.fake_quantize_*), the loss is the mean squared error
  of the outputs (logits): on Lite0 it beat KL divergence (docs/int8.md);
- afterwards the observers are put back, the weight observers re-observe the new weights, and convert_pt2e
  quantizes as always: activation ranges stay the calibrated ones, and biases stay as bias correction left
  them (training them as well did not help).

Written here because torchao's PT2E QAT (prepare_qat_pt2e) needs a QAT form of every quantization spec, ours
included (fixed ReLU6 ranges, shared qparams, kept-float layers); this reuses the PTQ graph as it is.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lwdeploy.quantization.pt2e import graph_attr, replace_graph_attr, single_thread


class _ActivationFakeQuant(nn.Module):
    """An activation observer's calibrated int8 range, applied with straight-through gradients."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.quant_min, self.quant_max = observer.quant_min, observer.quant_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min,
                                                     self.quant_max)


class _WeightFakeQuant(nn.Module):
    """weight + δ·s₀ on its symmetric int8 grid; δ (in int8 steps) is what distillation learns."""

    def __init__(self, observer: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.per_channel = observer.qscheme == torch.per_channel_symmetric
        self.axis = observer.ch_axis if self.per_channel else 0
        self.quant_min, self.quant_max = observer.quant_min, observer.quant_max
        self.register_buffer("step0", self._scale(weight))
        self.delta = nn.Parameter(torch.zeros_like(weight))

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel (or per-tensor) max|w| / qmax, as the symmetric observers compute it, shaped like w."""
        half_range = (self.quant_max - self.quant_min) / 2
        if not self.per_channel:
            return torch.clamp(w.abs().amax() / half_range, min=2.0 ** -12).reshape([1] * w.dim())
        dims = [d for d in range(w.dim()) if d != self.axis]
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return torch.clamp(w.abs().amax(dim=dims) / half_range, min=2.0 ** -12).view(shape)

    def tuned(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta * self.step0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = self.tuned(weight)
        with torch.no_grad():
            scale = self._scale(w)
        if not self.per_channel:
            return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(scale.numel(), dtype=torch.int32),
                                                      self.axis, self.quant_min, self.quant_max)


def _observers(prepared: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in str(n.target)]


def _symmetric(observer: nn.Module) -> bool:
    return getattr(observer, "qscheme", None) in (torch.per_channel_symmetric, torch.per_tensor_symmetric)


def distill(prepared: torch.fx.GraphModule, teacher: nn.Module, images: torch.Tensor, *, steps: int = 40,
            batch: int = 8, lr: float = 2e-3, seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Fine-tune the weights of the calibrated `prepared` graph in place so its fake-int8 outputs match
    `teacher`'s on `images` (N, C, H, W; drawn in a seeded order with random horizontal flips).
    Returns a JSON-able summary. The graph is specialised to batch 1, so each step accumulates `batch` images."""
    t0 = time.perf_counter()
    nodes = _observers(prepared)
    originals: dict[str, nn.Module] = {}
    weights: dict[str, str] = {}            # observer target → weight attribute it observes
    for n in nodes:
        originals.setdefault(n.target, graph_attr(prepared, n.target))
        src = n.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "get_attr" and _symmetric(originals[n.target]):
            weights[n.target] = src.target
    if not weights or steps <= 0:
        return {"steps": 0, "weights_tuned": 0,
                "why": "no steps" if weights else "no symmetric int8 weight observers on constant weights"}
    frozen = [p for p in prepared.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    fakes: dict[str, _WeightFakeQuant] = {}
    for target, observer in originals.items():
        if target in weights:
            replace_graph_attr(prepared, weights[target], graph_attr(prepared, weights[target]).detach().clone())
            fakes[target] = _WeightFakeQuant(observer, graph_attr(prepared, weights[target]))
            replace_graph_attr(prepared, target, fakes[target])
        else:
            replace_graph_attr(prepared, target, _ActivationFakeQuant(observer))
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(images), generator=gen)
                       for _ in range(steps * batch // max(len(images), 1) + 1)])[:steps * batch]
    flips = (torch.rand(len(order), generator=gen) < 0.5).tolist()
    losses = []
    try:
        with single_thread():   # batch-1 graph: a second thread mostly waits; one thread keeps runs identical
            with torch.no_grad():       # the float outputs, once per (image, flip) drawn
                teacher_out = {(i, f): teacher(images[i:i + 1].flip(-1) if f else images[i:i + 1])
                               for i, f in set(zip(order.tolist(), flips))}
            targets = [teacher_out[i, f] for i, f in zip(order.tolist(), flips)]
            optimizer = torch.optim.Adam([f.delta for f in fakes.values()], lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            for step in range(steps):
                optimizer.zero_grad()
                total = 0.0
                for k in range(step * batch, (step + 1) * batch):
                    x = images[order[k]:order[k] + 1]
                    out = prepared(x.flip(-1) if flips[k] else x)
                    loss = F.mse_loss(_flat(out), _flat(targets[k])) / batch
                    loss.backward()
                    total += float(loss.detach())
                optimizer.step()
                schedule.step()
                losses.append(total)
                if progress:
                    progress(step + 1, steps)
        with torch.no_grad():
            for target, fake in fakes.items():
                tuned = fake.tuned(graph_attr(prepared, weights[target]))
                replace_graph_attr(prepared, weights[target], tuned.detach().clone())
            moved = torch.cat([f.delta.abs().flatten() for f in fakes.values()])
    finally:
        for target, observer in originals.items():
            replace_graph_attr(prepared, target, observer)
        for p in frozen:
            p.requires_grad_(True)
    for target, attr in weights.items():    # convert_pt2e takes the weight scales from these observers
        observer = originals[target]
        observer.reset_min_max_vals()
        observer(graph_attr(prepared, attr))
    return {"steps": steps, "batch": batch, "lr_in_int8_steps": lr, "images": len(images),
            "weights_tuned": len(fakes), "loss_first_last": [round(losses[0], 6), round(losses[-1], 6)],
            "mean_abs_change_in_int8_steps": round(float(moved.mean()), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def _flat(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return torch.cat([_flat(o) for o in out])
    return out.reshape(-1)
