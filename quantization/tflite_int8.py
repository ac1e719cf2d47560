"""TFLite int8: graph rewrites and qparam sharing so litert-torch's int8 kernels accept every op.

TFLite's int8 PAD, SLICE, RESHAPE, TRANSPOSE, GATHER, AVERAGE_POOL_2D … require the SAME scale and zero point
on input and output ("same scale constraint"); the converter refuses the model otherwise. litert-torch's
PT2E quantizer shares qparams only for a short list of ops (`propagate_annotation`: view/permute/flatten/
slice_copy/…), and that list misses the training-IR forms torch.export gives it (`aten.slice.Tensor`,
`aten.split.Tensor` + getitem, `unsqueeze`, `unflatten`, `transpose.int`, `constant_pad_nd`). Such an op then
sits between its producer's observer and its consumer's own observer with two different ranges. Measured
(default export matrix, session 2): MicroNet-M0's `torch.split` of the dynamic-shift-max coefficients failed
on SLICE (zero point -127 vs -126), and the padded `nn.AvgPool2d` of DiCENet, NASNet-A and PNASNet on PAD.

`TFLiteInt8Quantizer` (a `PT2EQuantizer`, so litert-torch's converter takes it back as its quant config):
* before annotation (`transform_for_annotation`), on the exported graph where shapes are static:
  - `split` / `split_with_sizes` / `chunk` + getitem → one `slice` per piece (a tuple output cannot carry an
    observer; a slice can share its input's);
  - `avg_pool2d` with padding → depthwise `conv2d` with constant 1/k² weights at the pool's stride and
    padding (equal in float to count_include_pad=True). With count_include_pad=False the border windows
    average fewer elements: a MUL by a constant (1,1,Ho,Wo) map k²/count restores exactly that. The conv
    quantizes per channel without error (every weight is the channel's max → exactly 127·scale), gets its
    own output range, and runs in XNNPACK int8; the PAD that litert-torch emitted for the pool is gone
    (the padding is the conv's own).
* after annotation (`annotate`): every pure data-movement op whose input is quantized shares its input's
  qparams on its input edge and its output (`SharedQuantizationSpec`), in graph order so chains
  (unsqueeze → slice → …) share one range. Moving or padding values with zero never needs a new range: the
  observers always include 0, so the pad value is exact.
"""

from __future__ import annotations

import operator

import torch
from litert_torch.quantize import pt2e_quantizer as pq
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

ANNOTATION = "quantization_annotation"
aten = torch.ops.aten

# ops whose output lies on their input's int8 grid (move, select, zero-pad, clamp at 0, max, mean): sharing is exact
DATA_MOVEMENT = {
    aten.slice.Tensor, aten.slice_copy.Tensor, aten.select.int, aten.narrow.default, aten.index_select.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.unflatten.int,
    aten.permute.default, aten.transpose.int, aten.clone.default, aten.contiguous.default,
    aten.constant_pad_nd.default,
    # ReLU on its input's grid is exact (the grid holds 0). litert-torch annotates ReLU only fused into a conv;
    # a standalone one (NASNet's ReLU → separable conv after an add/concat) stayed float, and the PAD litert
    # emits for its stride-2 conv met the PAD of a max-pool on the same tensor with two scales.
    aten.relu.default, aten.relu_.default,
    # litert-torch annotates max-pool only when its input was annotated BEFORE it (max_pool2d runs ahead of
    # add/cat in its annotator order): after an add (NASNet cell states) the pool stayed float and its PAD met
    # other readers' qparams. Average pools left here are unpadded (padded ones became convs above).
    aten.max_pool2d.default, aten.avg_pool2d.default,
}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default}
_AVG_POOLS = {aten.avg_pool2d.default}


class TFLiteInt8Quantizer(pq.PT2EQuantizer):
    """litert-torch's PT2EQuantizer plus the rewrites and sharing above (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.rewritten = {"split_to_slices": 0, "avg_pool_to_depthwise": 0, "shared_qparams": 0}

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().transform_for_annotation(model)
        self.rewritten["split_to_slices"] += splits_to_slices(model)
        self.rewritten["avg_pool_to_depthwise"] += padded_avg_pools_to_depthwise(model)
        return model

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().annotate(model) or model
        from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec

        spec = get_input_act_qspec(self.global_config) if self.global_config is not None else None
        self.rewritten["shared_qparams"] += share_data_movement_qparams(model, spec)
        return model


def _val(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _copy_meta(new: torch.fx.Node, old: torch.fx.Node, val) -> None:
    # nn_module_stack keeps keep-float paths and converter error messages pointing at the source module
    for key in ("nn_module_stack", "stack_trace", "from_node"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    if val is not None:
        new.meta["val"] = val


def splits_to_slices(gm: torch.fx.GraphModule) -> int:
    """`split`/`split_with_sizes`/`chunk` read through getitem → one aten.slice per used piece. Returns how
    many splits were rewritten."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SPLITS:
            continue
        src = node.args[0]
        vals = node.meta.get("val")
        if _val(src) is None or not isinstance(vals, (list, tuple)):
            continue
        if not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
            continue
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        dim = dim % src.meta["val"].dim()
        starts, pos = [], 0
        for piece in vals:
            starts.append(pos)
            pos += int(piece.shape[dim])
        for getitem in list(node.users):
            i = getitem.args[1]
            with gm.graph.inserting_before(getitem):
                sl = gm.graph.call_function(aten.slice.Tensor,
                                            (src, dim, starts[i], starts[i] + int(vals[i].shape[dim])))
            _copy_meta(sl, node, getitem.meta.get("val"))
            getitem.replace_all_uses_with(sl)
            gm.graph.erase_node(getitem)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _pool_args(node: torch.fx.Node):
    """(k, stride, padding, ceil_mode, count_include_pad, divisor_override) of an aten.avg_pool2d node."""
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    defaults = {"stride": [], "padding": [0, 0], "ceil_mode": False, "count_include_pad": True,
                "divisor_override": None}
    args = dict(zip(names, node.args))
    for name in names[1:]:
        if name not in args:
            args[name] = node.kwargs.get(name, defaults.get(name))
    pair = lambda v: [int(v[0]), int(v[-1])] if isinstance(v, (list, tuple)) and v else [int(v)] * 2  # noqa: E731
    k = pair(args["kernel_size"])
    s = pair(args["stride"]) if args["stride"] else list(k)
    return k, s, pair(args["padding"]), bool(args["ceil_mode"]), bool(args["count_include_pad"]), \
        args["divisor_override"]


def border_divisor_map(h: int, w: int, k, s, p) -> torch.Tensor:
    """(1, 1, Ho, Wo): k²/count, count = how many input pixels (not padding) each pool window covers."""
    ones = torch.ones(1, 1, h, w)
    inside = torch.nn.functional.avg_pool2d(ones, k, s, p, count_include_pad=True)  # count / k²
    return 1.0 / inside


def padded_avg_pools_to_depthwise(gm: torch.fx.GraphModule) -> int:
    """aten.avg_pool2d with padding → depthwise conv2d (1/k² weights) [· border map]. Returns the count."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _AVG_POOLS:
            continue
        x = node.args[0]
        val, out = _val(x), _val(node)
        if val is None or out is None or val.dim() != 4:
            continue
        k, s, p, ceil_mode, include_pad, divisor = _pool_args(node)
        if p == [0, 0] or ceil_mode or divisor is not None:
            continue                     # no PAD to remove / a divisor rule we do not reproduce
        c, h, w = int(val.shape[1]), int(val.shape[2]), int(val.shape[3])
        tag = f"_lw_avgpool{count}"
        gm.register_buffer(f"{tag}_weight", torch.full((c, 1, k[0], k[1]), 1.0 / (k[0] * k[1]),
                                                       dtype=val.dtype))
        with gm.graph.inserting_before(node):
            weight = gm.graph.get_attr(f"{tag}_weight")
            conv = gm.graph.call_function(aten.conv2d.default, (x, weight, None, s, p, [1, 1], c))
        weight.meta["val"] = getattr(gm, f"{tag}_weight")
        _copy_meta(conv, node, out)
        result = conv
        if not include_pad:
            gm.register_buffer(f"{tag}_divisor", border_divisor_map(h, w, k, s, p).to(val.dtype))
            with gm.graph.inserting_after(conv):
                fix = gm.graph.get_attr(f"{tag}_divisor")
            with gm.graph.inserting_after(fix):
                result = gm.graph.call_function(aten.mul.Tensor, (conv, fix))
            fix.meta["val"] = getattr(gm, f"{tag}_divisor")
            _copy_meta(result, node, out)
            # litert-torch's MUL annotator finds MULs by source function: make this one of them
            result.meta["source_fn_stack"] = [(f"{tag}_mul", operator.mul)]
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _zero_pad(node: torch.fx.Node) -> bool:
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)
    return value == 0


def share_data_movement_qparams(gm: torch.fx.GraphModule, input_spec=None) -> int:
    """Each not-yet-annotated data-movement op whose input has an output qspec shares it (input edge and
    output). With `input_spec`, one whose input is float (its producer not quantized) observes its input edge
    with that spec and its output shares that edge: PT2E then gives every reader of the float tensor one
    observer (implicit sharing of a producer's user edges), so the tensor is quantized once. Without it,
    litert-torch propagated the readers' different scales backwards through the float PAD/MAX_POOL into one
    tensor (NASNet: add → max-pool and → conv, "same scale constraint" on PAD). Returns how many ops were
    annotated."""
    shared = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in DATA_MOVEMENT:
            continue
        if node.target is aten.constant_pad_nd.default and not _zero_pad(node):
            continue                     # a non-zero pad value may lie outside the input's range
        ann = node.meta.get(ANNOTATION)
        if ann is not None and ann._annotated:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node):
            continue
        pann = prev.meta.get(ANNOTATION)
        if pann is not None and pann.output_qspec is not None:
            spec = SharedQuantizationSpec(prev)
            node.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map={prev: spec}, output_qspec=spec,
                                                           _annotated=True)
        elif input_spec is not None and _val(prev) is not None and _val(prev).is_floating_point():
            node.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map={prev: input_spec},
                                                           output_qspec=SharedQuantizationSpec((prev, node)),
                                                           _annotated=True)
        else:
            continue
        shared += 1
    return shared
