"""Fixed output ranges where the function fixes them: conv/linear/add → ReLU6 is quantized on [0, 6].

The PT2E quantizers (litert-torch's and ExecuTorch XNNPACK's) fuse conv+ReLU but not conv+ReLU6 (hardtanh):
they quantize the conv's output over its whole observed range and let ReLU6 share that range. A conv whose
output spans [-40, 40] then keeps ~20 of 256 int8 levels for the [0, 6] that survives the clamp. Measured
on EfficientNet-Lite0 (real weights): 23 dB SQNR right after the stem, 3.8 dB at the logits, 53 % top-1
agreement. `FixedReLU6Ranges` moves the quantization point after the clamp, with the exact range the
function has: scale 6/255, zero point −128 — the conv+clamp is then one int8 op in TFLite (fused RELU6)
and XNNPACK (fused output clamp).

A hard-sigmoid is that clamp times a constant: relu6(x + 3)·⅙ (lowering.py's hard-sigmoid, hard-swish and SE
gates). Its output range is fixed too, [0, 1]: the MUL by c > 0 gets scale 6c/255 and the clamp's zero
point, so every int8 value of the clamp maps to exactly one output value (an identity requantization, no
rounding), instead of a histogram observer's estimate of [0, 1] from the calibration images.
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.quantizer import (FixedQParamsQuantizationSpec, QuantizationAnnotation,
                                                 QuantizationSpec, Quantizer, SharedQuantizationSpec)

ANNOTATION = "quantization_annotation"
_CLAMPS = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.clamp.default,
           torch.ops.aten.relu6.default, torch.ops.aten.relu6_.default}
# F.relu6 (lowering.py's hard-swish x·relu6(x + 3)·⅙ and SE gate) exports as aten.relu6, nn.ReLU6 as hardtanh.
# Missing relu6 here left ExecuTorch's x + 3 quantized over its own range and the clamp as a separate XNNPACK
# Clamp op with a requantization (19 Clamp ops in MobileNetV3-Small int8, ETDump profile).
_PRODUCERS = ("conv", "linear", "add")

RELU6_SPEC = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=6.0 / 255.0, zero_point=-128, quant_min=-128,
                                          quant_max=127, qscheme=torch.per_tensor_affine)


def _is_relu6(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _CLAMPS:
        return False
    if node.target in (torch.ops.aten.relu6.default, torch.ops.aten.relu6_.default):
        return True
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", node.kwargs.get("min", -1.0))
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", node.kwargs.get("max", 1.0))
    return lo == 0.0 and hi == 6.0


def scaled_spec(c: float) -> FixedQParamsQuantizationSpec:
    """The fixed range of relu6(·)·c: [0, 6c] on the clamp's int8 grid scaled by c."""
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=6.0 * c / 255.0, zero_point=-128, quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


def _positive_constant(model: torch.fx.GraphModule, node) -> float | None:
    """The value of a scalar or uniform constant tensor argument (get_attr), if it is one and > 0."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        value = float(node)
    elif isinstance(node, torch.fx.Node) and node.op == "get_attr":
        t = model
        for part in node.target.split("."):  # buffers of submodules: "blocks.0.act.sixth"
            t = getattr(t, part, None)
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or not bool((t == t.reshape(-1)[0]).all()):
            return None
        value = float(t.reshape(-1)[0])
    else:
        return None
    return value if value > 0 else None


class FixedReLU6Ranges(Quantizer):
    def __init__(self, quantizer: Quantizer):
        super().__init__()
        self.quantizer = quantizer
        self.fixed = 0
        self.fixed_readers = 0
        self.fixed_hardsigmoids = 0

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return self.quantizer.transform_for_annotation(model)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = self.quantizer.annotate(model) or model
        for clamp in list(model.graph.nodes):
            if not _is_relu6(clamp):
                continue
            prod = clamp.args[0]
            if not isinstance(prod, torch.fx.Node) or len(prod.users) != 1:
                continue                      # the pre-clamp value is read elsewhere: it needs its own range
            if not any(p in str(prod.target) for p in _PRODUCERS):
                continue
            if any("mean" in str(u.target) for u in clamp.users):
                # A ReLU6 read by a MEAN (global pool, SE squeeze) keeps the producer's observed range: with
                # the fixed range, TFLite's int8 MEAN broke the whole output (logit SQNR 0.2 dB vs 18 dB,
                # tests/test_converters.py tiny net; MobileNetV3-Small cosine 0.42).
                continue
            ann = prod.meta.get(ANNOTATION)
            if ann is None or ann.output_qspec is None:
                continue                      # not quantized (e.g. kept float): leave it alone
            ann.output_qspec = None
            clamp.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map={}, output_qspec=RELU6_SPEC,
                                                            _annotated=True)
            # Readers of the clamp take the same fixed range on their input edge; their own (histogram)
            # observer would requantize, and TFLite's PAD before a stride-2 conv rejects differing scales.
            for user in clamp.users:
                uann = user.meta.get(ANNOTATION)
                if uann is not None and clamp in uann.input_qspec_map:
                    uann.input_qspec_map[clamp] = RELU6_SPEC
            self.fixed += 1
        # anything that shared the producer's (now absent) output range shares the clamp's instead
        for node in model.graph.nodes:
            ann = node.meta.get(ANNOTATION)
            if ann is None:
                continue
            for key, spec in list(ann.input_qspec_map.items()):
                if isinstance(spec, SharedQuantizationSpec) and _points_to_moved(spec):
                    ann.input_qspec_map[key] = RELU6_SPEC
            if isinstance(ann.output_qspec, SharedQuantizationSpec) and _points_to_moved(ann.output_qspec):
                ann.output_qspec = RELU6_SPEC
        self.fixed_hardsigmoids = _fix_scaled_clamps(model)
        self.fixed_readers = _fixed_range_reaches_readers(model)
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        self.quantizer.validate(model)


_MULS = {torch.ops.aten.mul.Tensor, torch.ops.aten.mul.Scalar}


def _fix_scaled_clamps(model: torch.fx.GraphModule) -> int:
    """relu6 (on the fixed [0, 6] range) × constant c > 0 → output on the fixed range [0, 6c] (hard-sigmoid:
    c = ⅙, [0, 1]); its readers take that range on their input edge. Returns how many MULs were fixed."""
    fixed = 0
    for mul in model.graph.nodes:
        if mul.op != "call_function" or mul.target not in _MULS or len(mul.args) != 2:
            continue
        ann = mul.meta.get(ANNOTATION)
        if ann is None or ann.output_qspec is None:
            continue                          # not quantized (kept float)
        for clamp, other in (mul.args, mul.args[::-1]):
            cann = clamp.meta.get(ANNOTATION) if isinstance(clamp, torch.fx.Node) else None
            c = _positive_constant(model, other)
            if cann is None or cann.output_qspec is not RELU6_SPEC or c is None:
                continue
            spec = scaled_spec(c)
            ann.output_qspec = spec
            if clamp in ann.input_qspec_map:
                ann.input_qspec_map[clamp] = RELU6_SPEC
            for user in mul.users:
                uann = user.meta.get(ANNOTATION)
                if uann is not None and mul in uann.input_qspec_map:
                    uann.input_qspec_map[mul] = spec
            fixed += 1
            break
    return fixed


def _resolve(spec, seen=None):
    """Follow SharedQuantizationSpec links (node → its output spec, edge → that input edge's spec)."""
    seen = seen if seen is not None else set()
    while isinstance(spec, SharedQuantizationSpec) and id(spec) not in seen:
        seen.add(id(spec))
        target = spec.edge_or_node
        if isinstance(target, tuple):
            ann = target[1].meta.get(ANNOTATION)
            spec = ann.input_qspec_map.get(target[0]) if ann is not None else None
        else:
            ann = target.meta.get(ANNOTATION)
            spec = ann.output_qspec if ann is not None else None
    return spec


def _fixed_range_reaches_readers(model: torch.fx.GraphModule) -> int:
    """A ReLU6 output that passes through qparam-sharing ops (reshape/transpose/slice/pad …, which share
    their input's range) is still on the fixed [0, 6] grid; the op that finally reads it takes that range on
    its input edge too, as direct readers of the clamp do above. With its own observer there instead, the
    last sharing op got a requantization folded into it: MicroNet's channel shuffle (unflatten → transpose →
    flatten → conv) failed TFLite int8's same-scale check on TRANSPOSE (scale 6/255 vs 5.997/255)."""
    changed = 0
    for node in model.graph.nodes:
        ann = node.meta.get(ANNOTATION)
        if ann is None or not isinstance(ann.output_qspec, SharedQuantizationSpec):
            continue
        if _resolve(ann.output_qspec) is not RELU6_SPEC:
            continue
        for user in node.users:
            uann = user.meta.get(ANNOTATION)
            if uann is not None and type(uann.input_qspec_map.get(node)) is QuantizationSpec:
                uann.input_qspec_map[node] = RELU6_SPEC
                changed += 1
    return changed


def _points_to_moved(spec: SharedQuantizationSpec) -> bool:
    target = spec.edge_or_node
    node = target[0] if isinstance(target, tuple) else target
    ann = node.meta.get(ANNOTATION) if isinstance(node, torch.fx.Node) else None
    return ann is not None and ann.output_qspec is None and any(_is_relu6(u) for u in node.users)
