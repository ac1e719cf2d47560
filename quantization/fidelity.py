"""How much an int8 model departs from its float original, and where.

`fidelity_report(float_model, quantized, heldout)` — stored in the manifest with every int8 export:
top-1 agreement, top-5 containment (int8 top-1 inside float top-5), output error and output SQNR on held-out
images. `quantized` is either the artifact's outputs on `heldout` (an (N, C) tensor / array, as a converter's
verify() gets them) or a callable model (e.g. the PT2E-converted GraphModule, which simulates int8).

`layer_sqnr(float_model, quantized_gm, heldout)` — per-layer SQNR of activations between the float model and
the PT2E int8-simulated GraphModule, matched by module path. The error accumulates down the network, so the
layers that hurt are the ones where SQNR *drops* most (`drop_db`); `worst_layers` ranks them, and their paths
are what `keep_float=[…]` takes (see lwdeploy.quantization.keep_float).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    if isinstance(x, (list, tuple)):
        return torch.cat([_as_tensor(v).reshape(1, -1) if _as_tensor(v).dim() == 1 else _as_tensor(v) for v in x])
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10·log10(‖ref‖² / ‖ref − test‖²); +inf when identical."""
    ref, test = reference.detach().double().flatten(), test.detach().double().flatten()
    noise = float(((ref - test) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


@torch.no_grad()
def _run(model: Callable, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    if isinstance(model, torch.fx.GraphModule):
        batch = 1            # exported programs are specialised to the example's batch size (1)
    outs = []
    for i in range(0, len(images), batch):
        outs.append(_as_tensor(model(images[i:i + batch])))
    return torch.cat(outs)


def compare_outputs(reference: torch.Tensor, test: torch.Tensor) -> dict[str, Any]:
    """Top-1 agreement, top-5 containment and output error of `test` logits against float `reference`."""
    ref, out = _as_tensor(reference), _as_tensor(test)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: float {tuple(ref.shape)} vs quantized {tuple(out.shape)}")
    ref2, out2 = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    k = min(5, ref2.shape[1])
    top1_ref, top1_out = ref2.argmax(1), out2.argmax(1)
    top5_ref = ref2.topk(k, dim=1).indices
    diff = (out2 - ref2).abs()
    return {
        "n": int(len(ref2)),
        "top1_agreement": float((top1_ref == top1_out).float().mean()),
        "top5_containment": float((top5_ref == top1_out[:, None]).any(1).float().mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "output_range": float(ref2.max() - ref2.min()),
        "output_sqnr_db": round(sqnr_db(ref2, out2), 2),
    }


def fidelity_report(float_model: nn.Module | Callable, quantized: Any, heldout: torch.Tensor, *,
                    reference: torch.Tensor | None = None, per_layer: bool = False,
                    top_layers: int = 10) -> dict[str, Any]:
    """Fidelity of an int8 model against `float_model` on `heldout` (N,3,H,W) — a JSON-ready dict.

    quantized: (N, C) outputs of the artifact on `heldout`, or a callable (simulated int8 model).
    reference: float outputs on `heldout` if already computed (saves a float run).
    per_layer: also rank layers by SQNR drop (needs `quantized` to be a PT2E-converted GraphModule).
    """
    if reference is None:
        was = getattr(float_model, "training", False)
        if isinstance(float_model, nn.Module):
            float_model.eval()
        reference = _run(float_model, heldout)
        if isinstance(float_model, nn.Module):
            float_model.train(was)
    outputs = _run(quantized, heldout) if callable(quantized) else _as_tensor(quantized)
    report = compare_outputs(reference, outputs)
    report["images"] = int(len(heldout))
    if per_layer:
        if not isinstance(quantized, torch.fx.GraphModule):
            report["per_layer"] = {"error": "per-layer SQNR needs the PT2E-converted GraphModule, not outputs"}
        else:
            layers = layer_sqnr(float_model, quantized, heldout[: min(len(heldout), 16)])
            report["per_layer"] = {"layers": layers, "worst": worst_layers(layers, top_layers)}
    return report


# ---------------------------------------------------------------------------------------------- per layer

_DQ_NAMES = ("dequantize_per_tensor", "dequantize_per_channel")


def _innermost_fqn(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    # torch.export records "L['self'].blocks.0" style paths in some versions; keep the dotted module path
    return path.replace("L['self'].", "").replace("L__self__.", "") if isinstance(path, str) else None


def _activation_taps(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    """module path → the dequantize node carrying that module's int8 output (the last one in graph order)."""
    taps: dict[str, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(s in str(node.target) for s in _DQ_NAMES):
            continue
        q = node.args[0]
        if not isinstance(q, torch.fx.Node) or "quantize_per_tensor" not in str(q.target):
            continue                                   # weights are per-channel constants, not activations
        producer = q.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.op != "call_function":
            continue
        fqn = _innermost_fqn(producer)
        if fqn:
            taps[fqn] = node
    return taps


def _float_source(path: str, modules: dict[str, nn.Module]) -> str:
    """PT2E folds BatchNorm into the conv before it: that conv's int8 output is the BN's float output."""
    if isinstance(modules[path], nn.Conv2d) and "." in path:
        bn = path.rsplit(".", 1)[0] + ".bn"
        if isinstance(modules.get(bn), nn.BatchNorm2d):
            return bn
    return path


@torch.no_grad()
def layer_sqnr(float_model: nn.Module, quantized_gm: torch.fx.GraphModule, images: torch.Tensor) -> list[dict]:
    """Per module: SQNR (dB) of its int8-simulated output vs its float output, in network order.

    `float_model` must be the module that was exported and quantized (same module paths), e.g. the lowered
    copy. Modules whose float output shape differs from the tap (fused patterns) are skipped.
    """
    taps = _activation_taps(quantized_gm)
    modules = dict(float_model.named_modules())
    wanted = [p for p in taps if p in modules]
    float_acts: dict[str, list[torch.Tensor]] = {p: [] for p in wanted}
    hooks = [modules[_float_source(p, modules)].register_forward_hook(
        lambda m, i, o, p=p: float_acts[p].append(o.detach())) for p in wanted]
    was = float_model.training
    float_model.eval()
    try:
        for i in range(len(images)):
            float_model(images[i:i + 1])
    finally:
        for h in hooks:
            h.remove()
        float_model.train(was)

    q_acts: dict[str, list[torch.Tensor]] = {p: [] for p in wanted}
    node_to_path = {taps[p]: p for p in wanted}

    class _Tap(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in node_to_path:
                q_acts[node_to_path[n]].append(out.detach())
            return out

    for i in range(len(images)):
        _Tap(quantized_gm).run(images[i:i + 1])

    rows, prev = [], None
    order = {p: i for i, p in enumerate(modules)}
    for p in sorted(wanted, key=lambda p: order[p]):
        f, q = float_acts[p], q_acts[p]
        if not f or len(f) != len(q) or f[-1].shape != q[-1].shape:
            continue
        f_all, q_all = torch.cat([t.flatten() for t in f]), torch.cat([t.flatten() for t in q])
        s = sqnr_db(f_all, q_all)
        rows.append({"layer": p, "type": type(modules[p]).__name__, "sqnr_db": round(s, 2),
                     "drop_db": None if prev is None or math.isinf(s) or math.isinf(prev) else round(prev - s, 2)})
        prev = s
    return rows


def worst_layers(rows: Sequence[dict], n: int = 10) -> list[dict]:
    """The `n` layers with the largest SQNR drop from the layer before (the ones that add the most noise)."""
    ranked = [r for r in rows if r.get("drop_db") is not None]
    return sorted(ranked, key=lambda r: r["drop_db"], reverse=True)[:n]
