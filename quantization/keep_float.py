"""Keep chosen layers in float: `keep_float=[module paths]` (ExportRequest.options["keep_float"]).

Works with any PT2E quantizer (litert-torch, ExecuTorch XNNPACK, coremltools): `KeepFloat(quantizer, paths)`
lets the wrapped quantizer annotate the graph, then removes the annotations of every node that belongs to one
of `paths` (the module itself or anything inside it) — so prepare_pt2e puts no observers there and those ops
stay float, with QUANTIZE/DEQUANTIZE at their edges. Pick the paths from the fidelity report's
`per_layer.worst` (the largest SQNR drops); each kept layer costs latency, so measure it.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torchao.quantization.pt2e.quantizer import Quantizer, SharedQuantizationSpec

from lwdeploy.errors import LwdeployError

ANNOTATION = "quantization_annotation"


def _node_paths(node: torch.fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for path, _cls in stack.values():
        if isinstance(path, str):
            out.append(path.replace("L['self'].", "").replace("L__self__.", ""))
    return out


def slow_int8_depthwise(model: torch.nn.Module) -> list[str]:
    """Module paths of the depthwise convolutions that ExecuTorch's XNNPACK runs slower in int8 than in float:
    5×5 kernels, and channel multipliers (out > in; MicroNet-M0 int8/float 1.20 → 1.15×, docs/int8_zoo.md;
    SQNR vs float 15.35 → 15.75 dB in its export's fidelity check).

    Its int8 depthwise kernel with 10-25 taps (5×5) took 1.63× its float time, while 3×3 is at par (1.05×) and
    TFLite's int8 5×5 is 0.96× (`python benchmarks/depthwise_int8.py`, 1 thread). Kept float inside the int8
    program (one DEQUANTIZE in, one QUANTIZE out), they made ExecuTorch int8 faster: int8/float MixNet-S
    0.76 → 0.62×, MobileNetV3-Large 0.75 → 0.69× (`benchmarks/zoo_int8.py`, docs/int8_zoo.md). A ConvBNAct
    holding such a conv is kept whole (its activation then runs float too), and a tiled large kernel
    (lowering.py) whole."""
    from lwdeploy.models.layers import ConvBNAct
    from lwdeploy.quantization.lowering import TiledDepthwiseConv2d

    def slow(m: torch.nn.Module) -> bool:
        if not (isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1):
            return False
        # a channel multiplier (out > in, MicroNet's 4→8, 8→16, …) is no DWConv for XNNPACK: it runs as
        # a grouped IGEMM, slower in int8 than in float (ETDump of MicroNet-M0: 0.47 vs 0.31 ms)
        return 9 < m.kernel_size[0] * m.kernel_size[1] <= 25 or m.out_channels > m.in_channels

    paths: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in paths):
            continue                                   # inside a module already kept whole
        if isinstance(m, TiledDepthwiseConv2d) or (isinstance(m, ConvBNAct) and slow(m.conv)) or slow(m):
            paths.append(name)
    return paths


def layer_norms(model: torch.nn.Module) -> list[str]:
    """Module paths of the LayerNorms that ExecuTorch's lowering rewrote into XNNPACK ops (lowering.py
    `LinearMeanLayerNorm`, `ConvMeanLayerNorm`). They stay float in the int8 program, as the native LayerNorm
    did (no PT2E quantizer annotates layer_norm): a variance taken in int8 would lose the small channels."""
    from lwdeploy.quantization.lowering import ConvMeanLayerNorm, LinearMeanLayerNorm

    return [name for name, m in model.named_modules() if isinstance(m, (LinearMeanLayerNorm, ConvMeanLayerNorm))]


def rgb_stem(model: torch.nn.Module, example: torch.Tensor, max_taps: int = 9) -> list[str]:
    """Module path of a small stem: the one conv that reads the 3-channel input image itself (with its
    ConvBNAct), if its kernel has at most `max_taps` (3×3) taps; [] otherwise (two convs read the input,
    something else comes first, or a large stem).

    ExecuTorch's XNNPACK runs a 3×3 stem (a 27-deep dot product per output) faster in float, and the int8
    program then quantizes the stem's output instead of the image: int8 ShuffleNet v2 0.5 1.09 → 1.02 ms,
    DiCENet-0.5 3.16 → 2.96 ms, GhostNet 3.62 → 3.50 ms, MobileNetV2 3.69 → 3.61 ms. A 7×7 stem (147 deep) gains
    from int8 and stays: kept float, SqueezeNet 1.0 went 6.34 → 7.28 ms and SqueezeNeXt 4.03 → 4.47 ms. (CPU
    time, 1 thread, each int8 pair interleaved with the float program: `python benchmarks/float_stem_ab.py`.)
    Since session 17 int8 lowering writes such a 7×7 stem as space-to-depth (lowering.SpaceToDepthConv): its
    2×2 one-hot gather conv is then the conv reading the image, and stays float here (exact either way;
    SqueezeNeXt int8 3.02 ms with it float, 3.06 ms int8: `--no-float-for-speed`, benchmarks/artifacts_ab.py)."""
    from lwdeploy.models.input_readers import conv_reading_input_alone
    from lwdeploy.models.layers import ConvBNAct

    path = conv_reading_input_alone(model, example)
    if path is None:
        return []
    conv = model.get_submodule(path)
    if conv.in_channels != 3 or conv.groups != 1 or conv.kernel_size[0] * conv.kernel_size[1] > max_taps:
        return []
    parent = path.rpartition(".")[0]
    holder = model.get_submodule(parent) if parent else None
    return [parent] if isinstance(holder, ConvBNAct) and holder.conv is conv else [path]


def under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether module `path` is one of `prefixes` or inside one of them."""
    return any(path == k or path.startswith(k + ".") for k in prefixes)


def _inside(node: torch.fx.Node, paths: tuple[str, ...]) -> bool:
    return any(under(p, paths) for p in _node_paths(node))


def _refers_to(spec, dropped: set) -> bool:
    """Whether a SharedQuantizationSpec points at a spec that was dropped with a float node's annotation.

    A node names its own output spec: gone when that node is float. An edge (src, dst) names dst's spec for
    its input from src, which stays as long as dst keeps its annotation, also when src itself is float: a
    dense block's cat shares one scale across its inputs through the edge from its first input, the float stem
    conv included. (Dropping on src too unshared every cat of CondenseNet's dense-block chain under
    `--keep-float stem`, whose narrower ranges then clipped at int8 → int8 requantizes: 3.9 dB output SQNR.)"""
    if not isinstance(spec, SharedQuantizationSpec):
        return False
    edge_or_node = spec.edge_or_node
    if isinstance(edge_or_node, tuple):
        return edge_or_node[1] in dropped
    return edge_or_node in dropped


class KeepFloat(Quantizer):
    def __init__(self, quantizer: Quantizer, paths: Iterable[str]):
        super().__init__()
        self.quantizer = quantizer
        self.paths = tuple(p.strip() for p in paths if p and p.strip())
        self.unmatched: list[str] = []

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return self.quantizer.transform_for_annotation(model)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = self.quantizer.annotate(model) or model
        nodes = list(model.graph.nodes)
        hit = {k: False for k in self.paths}
        dropped = set()
        for n in nodes:
            if _inside(n, self.paths):
                for k in self.paths:
                    if any(under(p, (k,)) for p in _node_paths(n)):
                        hit[k] = True
                if ANNOTATION in n.meta:
                    del n.meta[ANNOTATION]
                    dropped.add(n)
        # Neighbours that share a quantization spec with a dropped node (e.g. relu6 sharing its input's
        # observer) lose theirs too, and so on until nothing refers to a dropped node.
        changed = True
        while changed:
            changed = False
            for n in nodes:
                ann = n.meta.get(ANNOTATION)
                if ann is None:
                    continue
                specs = list(ann.input_qspec_map.values()) + [ann.output_qspec]
                if any(_refers_to(s, dropped) for s in specs):
                    del n.meta[ANNOTATION]
                    dropped.add(n)
                    changed = True
        self.unmatched = [k for k, v in hit.items() if not v]
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        self.quantizer.validate(model)


def wrap(quantizer: Quantizer, keep_float: Iterable[str] | None, model: torch.nn.Module | None = None) -> Quantizer:
    """`quantizer` unchanged when nothing is kept; else KeepFloat. With `model`, unknown paths are user errors."""
    paths = [p for p in (keep_float or []) if p]
    if not paths:
        return quantizer
    if model is not None:
        known = dict(model.named_modules())
        bad = [p for p in paths if p not in known]
        if bad:
            sample = ", ".join(list(k for k in known if k)[:5])
            raise LwdeployError(f"keep_float: no module named {', '.join(map(repr, bad))}",
                                f"use module paths as in model.named_modules(), e.g. {sample}")
    return KeepFloat(quantizer, paths)


# ------------------------------------------------------------------------------ automatic choice in a budget

def layer_macs(model: torch.nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d / Linear for one forward of `example` (module path → MACs)."""
    macs: dict[str, int] = {}
    handles = []
    for path, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            def hook(mod, _i, out, path=path):
                kh, kw = mod.kernel_size
                macs[path] = int(out.numel() // out.shape[0]) * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(m, torch.nn.Linear):
            def hook(mod, _i, out, path=path):
                macs[path] = int(out.numel() // out.shape[0]) * mod.in_features
        else:
            continue
        handles.append(m.register_forward_hook(hook))
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return macs


def choose_within_budget(rows: list[dict], macs: dict[str, int], budget: float) -> tuple[list[str], float]:
    """The layers to keep in float: largest per-layer SQNR drop first (fidelity.layer_sqnr rows), as long as
    their summed share of the model's MACs stays within `budget` (0.05 = 5 %). Latency proxy: a float layer
    costs about its MAC share more than in int8 (float convs run ~2× slower than int8 ones on XNNPACK).
    Only Conv2d / Linear layers are candidates (they hold the int8 weights). Returns (paths, MAC share)."""
    total = sum(macs.values()) or 1
    chosen, spent = [], 0.0
    ranked = sorted((r for r in rows if r.get("drop_db") is not None and r["layer"] in macs),
                    key=lambda r: r["drop_db"], reverse=True)
    for r in ranked:
        if r["drop_db"] <= 0:
            break
        cost = macs[r["layer"]] / total
        if spent + cost > budget:
            continue
        chosen.append(r["layer"])
        spent += cost
    return chosen, spent
