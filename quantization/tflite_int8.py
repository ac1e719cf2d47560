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
  - `avg_pool2d` → depthwise `conv2d` with constant 1/k² weights at the pool's stride and padding (equal in
    float to count_include_pad=True; XNNPACK's delegate has no int8 AVERAGE_POOL_2D). With
    count_include_pad=False the border windows average fewer elements: a MUL by a constant (1,1,Ho,Wo) map
    k²/count restores exactly that. The conv quantizes per channel without error (every weight is the
    channel's max → exactly 127·scale), gets its own output range, and runs in XNNPACK int8; the PAD that
    litert-torch emitted for the pool is gone (the padding is the conv's own).
  The NAS-cell forms that left float islands or split XNNPACK's int8 delegate (issue #4; NASNet-A Mobile had
  28 float CONV_2D, 4 float ADD, 4 float BatchNorm SUB/MUL, 57 DEQUANTIZE / 71 QUANTIZE, 33 partitions):
  - BatchNorm of a cat of convs → folded into each conv (batchnorm_fold.py; pt2e.quantize runs it for every
    target before prepare);
  - strided max-pool whose padding is not TF "SAME" → SAME stride-1 pool + subsampling conv (no PADV2);
  - cat of more than 5 inputs → nested (XNNPACK's CONCATENATION takes at most 5);
  - ReLUs of one value merged; a ReLU no conv/add/mul can take as fused activation → `relu(y + 0)`, an int8
    ADD with fused RELU (XNNPACK runs no standalone int8 RELU; litert-torch fused ReLUs into convs that had
    other readers, which left those convs float).
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

from lwdeploy.quantization.fx_nodes import copy_meta as _copy_meta
from lwdeploy.quantization.fx_nodes import finish_rewrite
from lwdeploy.quantization.fx_nodes import node_val as _val
from lwdeploy.quantization.shared_qparams import MOVES, share_qparams

ANNOTATION = "quantization_annotation"
aten = torch.ops.aten

# ops whose output lies on their input's int8 grid (move, select, zero-pad, clamp at 0, max, mean): sharing is exact
DATA_MOVEMENT = MOVES | {
    aten.index_select.default, aten.constant_pad_nd.default,
    # ReLU on its input's grid is exact (the grid holds 0). litert-torch annotates ReLU only fused into a conv;
    # a standalone one (NASNet's ReLU → separable conv after an add/concat) stayed float, and the PAD litert
    # emits for its stride-2 conv met the PAD of a max-pool on the same tensor with two scales. (Fallback only:
    # unfusable_relus_to_add_relu leaves no standalone ReLU when the quantizer has a global config.)
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
        self.rewritten = {"split_to_slices": 0, "avg_pool_to_depthwise": 0,
                          "max_pool_to_same": 0, "wide_cats_nested": 0, "merged_relus": 0,
                          "relu_as_add_relu": 0, "shared_qparams": 0}

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = super().transform_for_annotation(model)
        self.rewritten["split_to_slices"] += splits_to_slices(model)
        self.rewritten["avg_pool_to_depthwise"] += avg_pools_to_depthwise(model)
        self.rewritten["max_pool_to_same"] += strided_max_pools_to_same(model)
        self.rewritten["wide_cats_nested"] += wide_cats_nested(model)
        self.rewritten["merged_relus"] += merge_duplicate_relus(model)
        self.rewritten["relu_as_add_relu"] += unfusable_relus_to_add_relu(model)
        return model

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec

        if self.global_config is not None:
            annotate_zero_add_relus(model, get_input_act_qspec(self.global_config),
                                    get_output_act_qspec(self.global_config))
        model = super().annotate(model) or model

        spec = get_input_act_qspec(self.global_config) if self.global_config is not None else None
        self.rewritten["shared_qparams"] += share_data_movement_qparams(model, spec)
        share_subsample_qparams(model)
        return model


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
    return finish_rewrite(gm, count)


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


def avg_pools_to_depthwise(gm: torch.fx.GraphModule) -> int:
    """aten.avg_pool2d → depthwise conv2d (1/k² weights) [· border map]. Returns the count.

    Unpadded pools too: LiteRT's XNNPACK delegate runs AVERAGE_POOL_2D in float only, so CondenseNet's four
    2×2 transition pools ran on LiteRT's own int8 kernel between 5 partitions (1.5 ms in `lwdeploy profile` of
    the int8 matrix artifact, taken on a busy box; int8/float went 0.57 → 0.49×, docs/int8_zoo.md)."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _AVG_POOLS:
            continue
        x = node.args[0]
        val, out = _val(x), _val(node)
        if val is None or out is None or val.dim() != 4:
            continue
        k, s, p, ceil_mode, include_pad, divisor = _pool_args(node)
        if ceil_mode or divisor is not None:
            continue                     # a window or divisor rule we do not reproduce
        if p == [0, 0] and k[0] * k[1] > 25:
            continue                     # a global pool: MEAN-like; a >25-tap depthwise conv would be an IGEMM
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
        if not include_pad and p != [0, 0]:  # without padding every window is whole
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
    return finish_rewrite(gm, count)


_RELUS = {aten.relu.default, aten.relu_.default}
ZERO_ADD = "lwdeploy_zero_add"       # node meta flag: x + 0 inserted before a ReLU (unfusable_relus_to_add_relu)
_FUSES_RELU = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default, aten.add.Tensor,
               aten.mul.Tensor}


def merge_duplicate_relus(gm: torch.fx.GraphModule) -> int:
    """ReLUs of the same value → one (NASNet: each separable stack on a cell state starts with its own ReLU of
    that state; two or three per state). Exact; returns how many were removed."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _RELUS or node.graph is not gm.graph:
            continue
        if not isinstance(node.args[0], torch.fx.Node):
            continue
        # graph order: `node` is the first ReLU of its input met here, every twin comes after it
        for twin in [u for u in node.args[0].users if u is not node and u.op == "call_function"
                     and u.target in _RELUS and len(u.args) == len(node.args)]:
            twin.replace_all_uses_with(node)
            gm.graph.erase_node(twin)
            removed += 1
    return finish_rewrite(gm, removed)


MAX_CAT_INPUTS = 5     # XNNPACK's CONCATENATION takes 2–5 inputs (measured: a 6-input int8 cat splits the delegate)


def wide_cats_nested(gm: torch.fx.GraphModule) -> int:
    """cat of more than 5 tensors → the narrowest run of n−4 consecutive inputs concatenated first, then the
    5-input cat (exact; the run is copied twice). NASNet-A's normal cell concatenates 6 states: each such CONCATENATION
    ran outside the XNNPACK delegate. Returns the count."""
    count = 0
    for cat in list(gm.graph.nodes):
        if cat.op != "call_function" or cat.target is not aten.cat.default:
            continue
        inputs = list(cat.args[0])
        out = _val(cat)
        if len(inputs) <= MAX_CAT_INPUTS or out is None or any(_val(i) is None for i in inputs):
            continue
        dim = (cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)) % out.dim()
        run = len(inputs) - MAX_CAT_INPUTS + 1
        widths = [int(_val(i).shape[dim]) for i in inputs]
        start = min(range(len(inputs) - run + 1), key=lambda j: sum(widths[j:j + run]))
        with gm.graph.inserting_before(cat):
            inner = gm.graph.call_function(aten.cat.default, (inputs[start:start + run], dim))
        shape = list(out.shape)
        shape[dim] = sum(widths[start:start + run])
        _copy_meta(inner, cat, out.new_empty(shape))
        inner.meta["source_fn_stack"] = [(inner.name, torch.cat)]     # litert-torch's cat annotator finds it
        cat.args = (inputs[:start] + [inner] + inputs[start + run:], *cat.args[1:])
        count += 1
    return finish_rewrite(gm, count)


def unfusable_relus_to_add_relu(gm: torch.fx.GraphModule) -> int:
    """relu(y) → relu(y + 0) where no int8 kernel can take the ReLU as its fused activation.

    XNNPACK runs no standalone int8 RELU (measured: conv → RELU → conv with the RELU int8 splits the delegate in
    two), so a ReLU must be some op's fused activation. litert-torch fuses it into a conv/add/mul that has no
    other reader, and — without checking that — into one that has: the producer's output then got no observer,
    its other readers observed their edge, and the converted model computed the producer in FLOAT with
    dequantized weights, QUANTIZE after it, and a float RELU (NASNet-A: 28 float CONV_2D, 4 float ADD, 33
    partitions). A ReLU of a cat, a pool or a shared conv output now reads `y + 0` instead: an int8 ADD with
    the ReLU fused (annotate_zero_add_relus), one elementwise pass like the ReLU itself, and its own output
    range over [0, max] (8 bits where sharing y's range would leave 7). Returns the count."""
    count = 0
    for relu in list(gm.graph.nodes):
        if relu.op != "call_function" or relu.target not in _RELUS:
            continue
        y = relu.args[0]
        val = _val(y)
        if not isinstance(y, torch.fx.Node) or val is None or not val.is_floating_point():
            continue
        if y.op == "call_function" and y.target in _FUSES_RELU and len(y.users) == 1:
            continue                     # litert-torch fuses it (conv+relu, add+relu, mul+relu)
        name = f"_lw_relu{count}_zero"
        gm.register_buffer(name, torch.zeros([1] * val.dim(), dtype=val.dtype))
        with gm.graph.inserting_before(relu):
            zero = gm.graph.get_attr(name)
            add = gm.graph.call_function(aten.add.Tensor, (y, zero))
        zero.meta["val"] = getattr(gm, name)
        _copy_meta(add, relu, val)
        add.meta[ZERO_ADD] = True
        add.meta["source_fn_stack"] = [(add.name, operator.add)]
        relu.args = (add, *relu.args[1:])
        count += 1
    return finish_rewrite(gm, count)


def annotate_zero_add_relus(gm: torch.fx.GraphModule, input_spec, output_spec) -> int:
    """The `y + 0` → ReLU pairs as litert-torch's add+ReLU pattern (no observer between them: one int8 ADD with
    fused RELU); the zero shares y's qparams (it quantizes to the zero point exactly either way)."""
    done = 0
    for add in gm.graph.nodes:
        if not add.meta.get(ZERO_ADD) or ANNOTATION in add.meta or len(add.users) != 1:
            continue
        relu = next(iter(add.users))
        y, zero = add.args[0], add.args[1]
        add.meta[ANNOTATION] = QuantizationAnnotation(
            input_qspec_map={y: input_spec, zero: SharedQuantizationSpec((y, add))}, _annotated=True)
        relu.meta[ANNOTATION] = QuantizationAnnotation(output_qspec=output_spec, _annotated=True)
        done += 1
    return done


SUBSAMPLE = "lwdeploy_subsample"     # node meta flag: a depthwise 1×1 conv with unit weights (exact subsampling)


def _same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one dimension."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def strided_max_pools_to_same(gm: torch.fx.GraphModule) -> int:
    """Padded strided max_pool2d whose padding is not TF "SAME" → stride-1 max_pool2d (SAME) + subsampling by a
    depthwise 1×1 conv with unit weights at the pool's stride.

    litert-torch lowers a max-pool's padding to PADV2 with the -inf pad value quantized, then MAX_POOL_2D VALID,
    unless the padding is SAME. XNNPACK does not run int8 PADV2: every such pool splits the delegate (and with
    several pools the converter shares one pad constant and requantizes it per pool with a QUANTIZE op, giving
    a pad value far above the int8 minimum). PyTorch's symmetric padding is SAME for stride 1 (k = 2p+1) and
    for odd sizes, but not for stride 2 on an even size (NASNet/PNASNet/AmoebaNet reduction cells: windows
    start at -1, SAME's at 0). Exact in float: a window of the stride-s pool at output i is centred on input
    s·i, which is where the stride-1 pool's output s·i is centred; the conv picks those. The conv's weights are
    exactly 1 in int8 (per-channel scale 1/127) and it shares its input's qparams (share_subsample_qparams), so
    it is exact in int8 too. Returns the count."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.max_pool2d.default:
            continue
        x, val, out = node.args[0], _val(node.args[0]), _val(node)
        if val is None or out is None or val.dim() != 4:
            continue
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
        args = dict(zip(names, node.args))
        args.update(node.kwargs)
        pair = lambda v, d: [int(v[0]), int(v[-1])] if isinstance(v, (list, tuple)) and v else (  # noqa: E731
            [int(v)] * 2 if isinstance(v, int) else d)
        k = pair(args["kernel_size"], None)
        st = pair(args.get("stride"), k)
        p = pair(args.get("padding", 0), [0, 0])
        if pair(args.get("dilation", 1), [1, 1]) != [1, 1] or args.get("ceil_mode", False):
            continue
        if st == [1, 1] or any(kk % 2 == 0 or pp != kk // 2 for kk, pp in zip(k, p)):
            continue                    # a stride-1 pool with p = k//2 padding is SAME already
        sizes = (int(val.shape[2]), int(val.shape[3]))
        torch_pads = [(pp, (int(o) - 1) * ss + kk - n - pp)
                      for n, kk, ss, pp, o in zip(sizes, k, st, p, out.shape[2:])]
        if torch_pads == [_same_padding(n, kk, ss) for n, kk, ss in zip(sizes, k, st)]:
            continue                    # litert-torch emits MAX_POOL_2D SAME for it
        c = int(val.shape[1])
        name = f"_lw_maxpool{count}_subsample"
        gm.register_buffer(name, torch.ones(c, 1, 1, 1, dtype=val.dtype))
        with gm.graph.inserting_before(node):
            pool = gm.graph.call_function(aten.max_pool2d.default, (x, k, [1, 1], p))
            weight = gm.graph.get_attr(name)
            conv = gm.graph.call_function(aten.conv2d.default, (pool, weight, None, st, [0, 0], [1, 1], c))
        pool.meta.update({key: v for key, v in node.meta.items() if key != "val"})
        pool.meta["val"] = val
        weight.meta["val"] = getattr(gm, name)
        _copy_meta(conv, node, out)
        conv.meta[SUBSAMPLE] = True
        # its own source tag: untagged, get_source_partitions would file it under its nn_module_stack's
        # MaxPool2d, and litert-torch's max-pool annotator asserts on a partition without a max_pool2d
        conv.meta["source_fn_stack"] = [(conv.name, torch.nn.functional.conv2d)]
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        count += 1
    return finish_rewrite(gm, count)


def share_subsample_qparams(gm: torch.fx.GraphModule) -> int:
    """The subsampling convs of strided_max_pools_to_same output their input's qparams (an exact copy)."""
    shared = 0
    for node in gm.graph.nodes:
        ann = node.meta.get(ANNOTATION)
        if not node.meta.get(SUBSAMPLE) or ann is None or ann.output_qspec is None:
            continue
        src = node.args[0]
        pann = src.meta.get(ANNOTATION)
        if pann is None or pann.output_qspec is None:
            continue
        ann.output_qspec = SharedQuantizationSpec(src)
        ann.input_qspec_map[src] = SharedQuantizationSpec(src)
        shared += 1
    return shared


def share_data_movement_qparams(gm: torch.fx.GraphModule, input_spec=None) -> int:
    """shared_qparams.share_qparams over DATA_MOVEMENT. `input_spec` matters here: without it, litert-torch
    propagated the readers' different scales backwards through a float PAD/MAX_POOL into one tensor (NASNet:
    add → max-pool and → conv, "same scale constraint" on PAD). Returns how many ops were annotated."""
    return share_qparams(gm, DATA_MOVEMENT, input_spec)
