"""BatchNorm after a concatenation of convolutions, folded into those convolutions (every int8 target).

prepare_pt2e folds a BatchNorm into the conv it reads; one that reads a cat of convs (MixNet's mixed depthwise
conv, NAS cells' FactorizedReduce) stays a float op between dequantize and quantize (on TFLite a float SUB/MUL
island that splits the XNNPACK delegate), and it makes convert_pt2e run torchao's QAT conv-BN fold, which
re-exports ~100 pattern graphs (25–35 CPU s on MixNet/NASNet). pt2e.quantize runs this on the captured graph.
"""

from __future__ import annotations

import operator

import torch

from lwdeploy.quantization.fx_nodes import copy_meta as _copy_meta
from lwdeploy.quantization.fx_nodes import finish_rewrite
from lwdeploy.quantization.fx_nodes import node_val as _val

aten = torch.ops.aten
_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_CONVS = {aten.conv2d.default, aten.convolution.default}


def _eval_batchnorms(gm: torch.fx.GraphModule):
    """The graph's inference-mode BatchNorm nodes whose only output in use is the normalised tensor."""
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in _BATCH_NORMS:
            continue
        if bn.target is aten.batch_norm.default and bn.args[5]:
            continue                                    # training-mode BN: batch statistics, nothing to fold
        if bn.target is not aten.batch_norm.default and not all(   # (out, mean, invstd): only out is read
                u.target is operator.getitem and u.args[1] == 0 for u in bn.users):
            continue
        yield bn


def _bn_tensors(gm: torch.fx.GraphModule, bn: torch.fx.Node) -> list:
    """[weight, bias, running_mean, running_var] of `bn` (None where the node passes None)."""
    params = dict(gm.named_parameters())
    return [(params[a.target] if a.target in params else gm.get_buffer(a.target)).detach()
            if isinstance(a, torch.fx.Node) else None for a in bn.args[1:5]]


def _constant(gm: torch.fx.GraphModule, name: str, value: torch.Tensor) -> torch.fx.Node:
    """`value` as a buffer of `gm` and a get_attr node for it at the graph's insertion point."""
    gm.register_buffer(name, value)
    node = gm.graph.get_attr(name)
    node.meta["val"] = value
    return node


def _replace_batchnorm(gm: torch.fx.GraphModule, bn: torch.fx.Node, new: torch.fx.Node) -> None:
    """Every reader of `bn`'s output reads `new` instead; `bn` (and its getitem) are removed."""
    if bn.target is aten.batch_norm.default:
        bn.replace_all_uses_with(new)
    for u in list(bn.users):                            # _native_batch_norm_legit_no_training: getitem(…, 0)
        u.replace_all_uses_with(new)
        gm.graph.erase_node(u)
    gm.graph.erase_node(bn)


def _fold_into_convs(gm: torch.fx.GraphModule, bns: list[torch.fx.Node]) -> None:
    """Fold these conv → BN pairs (torchao's per-pair fold). Not torchao's `_fuse_conv_bn_`: that folds EVERY
    BN that reads a conv, also one whose conv has other readers, which batchnorms_to_depthwise has yet to
    keep apart (CondenseNet's stem feeds its first BN and the dense cat: int8 top-1 agreement fell to 0 %)."""
    from torchao.quantization.pt2e.utils import fold_bn_weights_into_conv_node

    for bn in bns:
        conv = bn.args[0]
        fold_bn_weights_into_conv_node(conv, conv.args[1], conv.args[2] if len(conv.args) > 2 else None, bn, gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def batchnorm_through_cat(gm: torch.fx.GraphModule) -> int:
    """BatchNorm(cat([conv, conv, …], dim=1)) → cat([conv', conv', …]): each conv takes its channels' slice of
    the BN, folded into its weights (torchao's conv-BN fold; prepare_pt2e's own folds only a BN that reads a conv
    directly). NASNet/AmoebaNet's FactorizedReduce concatenates two stride-2
    1×1 convs and normalises the result: litert-torch annotates no batch_norm, so each stayed a float
    SUB/MUL/ADD island (4 in NASNet-A). Only when every input is a conv read by the cat alone (folding changes
    the conv's output for every reader). Returns how many BNs were moved."""
    count, pieces = 0, []
    for bn in _eval_batchnorms(gm):
        cat = bn.args[0]
        if not (isinstance(cat, torch.fx.Node) and cat.target is aten.cat.default and len(cat.users) == 1):
            continue
        inputs = cat.args[0]
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        if _val(cat) is None or dim % _val(cat).dim() != 1:
            continue
        if not all(isinstance(i, torch.fx.Node) and i.target in _CONVS and len(i.users) == 1 and _val(i) is not None
                   for i in inputs):
            continue
        params = _bn_tensors(gm, bn)
        tag, start = f"_lw_catbn{count}", 0
        for j, conv in enumerate(inputs):
            width = int(_val(conv).shape[1])
            with gm.graph.inserting_before(cat):   # every conv comes before the cat
                attrs = [_constant(gm, f"{tag}_{j}_{name}", p[start:start + width].clone())
                         for name, p in zip(("weight", "bias", "mean", "var"), params)]
                piece = gm.graph.call_function(bn.target, (conv, *attrs, *bn.args[5:]), dict(bn.kwargs))
                pieces.append(piece)
                if bn.target is aten.batch_norm.default:
                    _copy_meta(piece, bn, _val(conv))
                    out = piece
                else:                       # _native_batch_norm_legit_no_training: (out, mean, invstd)
                    _copy_meta(piece, bn, None)
                    out = gm.graph.call_function(operator.getitem, (piece, 0))
                    _copy_meta(out, bn, _val(conv))
            conv.replace_all_uses_with(out, delete_user_cb=lambda user: user is cat)
            start += width
        _replace_batchnorm(gm, bn, cat)
        count += 1
    if finish_rewrite(gm, count):
        _fold_into_convs(gm, pieces)
    return count


def batchnorms_to_depthwise(gm: torch.fx.GraphModule, *, standalone: bool = False) -> int:
    """BatchNorm(conv) where the conv has other readers → a 1×1 depthwise conv with the BN's scale and shift;
    with `standalone`, also every BN whose input is no conv at all (after a cat, a pool, an add).

    prepare_pt2e folds every BN that reads a conv into that conv's weights (torchao's `_fuse_conv_bn_` does not
    look at the conv's other users), which changes the conv's output for every other reader too. Pre-activation
    dense blocks have exactly that shape: CondenseNet's stem conv feeds both the first layer's BN and the dense
    concatenation, and its int8 output SQNR was −10 dB (+12 dB with the BN kept apart). As a depthwise 1×1
    conv the BN stays a separate op, runs in int8 inside the delegate on every target, and nothing folds it
    into the shared conv. A standalone BN is not annotated by litert-torch's quantizer: on TFLite it stayed a
    float MUL/ADD island between DEQUANTIZE/QUANTIZE (CondenseNet: 72 of them). Returns how many BNs were
    rewritten."""
    count = 0
    for bn in _eval_batchnorms(gm):
        source = bn.args[0]
        if not isinstance(source, torch.fx.Node):
            continue
        is_conv = source.target in _CONVS
        if (is_conv and len(source.users) == 1) or (not is_conv and not standalone):
            continue                                    # prepare_pt2e folds it (or the target keeps it)
        val = _val(source)
        if val is None or val.dim() != 4:
            continue
        weight, bias, mean, var = _bn_tensors(gm, bn)
        if mean is None or var is None:
            continue
        eps = bn.args[7] if bn.target is aten.batch_norm.default else bn.args[6]
        channels = int(val.shape[1])
        scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1.0)
        shift = (bias if bias is not None else 0.0) - mean * scale
        with gm.graph.inserting_before(bn):
            w = _constant(gm, f"_lw_bn_dw{count}_weight", scale.reshape(channels, 1, 1, 1).clone())
            b = _constant(gm, f"_lw_bn_dw{count}_bias", shift.clone())
            dw = gm.graph.call_function(aten.conv2d.default, (source, w, b, [1, 1], [0, 0], [1, 1], channels))
            _copy_meta(dw, bn, val)
        _replace_batchnorm(gm, bn, dw)
        count += 1
    return finish_rewrite(gm, count)


# ops that only rearrange values; a chain of them from a conv to a BN may permute channels (a channel shuffle)
_MOVES = {aten.view.default, aten.reshape.default, aten.unflatten.int, aten.flatten.using_ints,
          aten.transpose.int, aten.permute.default, aten.clone.default, aten.contiguous.default}


def _channel_source(chain: list[torch.fx.Node], val: torch.Tensor) -> torch.Tensor | None:
    """For the chain of move ops applied to a tensor shaped like `val`: src with output channel c = input
    channel src[c], or None if an output channel takes values of several input channels or the shape changes.
    Values moved within a channel are fine: a BatchNorm is the same affine map at every position of a channel.

    Found by running the chain on a tensor whose every element holds its channel number (exact in float32
    for any realistic width)."""
    n, c = int(val.shape[0]), int(val.shape[1])
    probe = torch.arange(c, dtype=torch.float32).reshape(1, c, *([1] * (val.dim() - 2))).expand(val.shape)
    out = probe.contiguous()
    for node in chain:
        out = node.target(out, *node.args[1:], **node.kwargs)
    if out.shape != val.shape:
        return None
    src = out.reshape(n, c, -1)[0]                          # (C, H·W): one channel number per row, if a permutation
    if not bool((src == src[:, :1]).all()):
        return None
    src = src[:, 0].long()
    return src if torch.equal(torch.sort(src).values, torch.arange(c)) else None


def batchnorm_through_channel_permutation(gm: torch.fx.GraphModule) -> int:
    """BatchNorm(shuffle(conv)) → shuffle(BatchNorm'(conv)), BN' being the BN with its channels permuted back,
    then folded into the conv. CondenseNet's dense layer normalises the channel-shuffled output
    of its 1×1 group conv: each of those 36 BNs stayed a separate op (an int8 1×1 depthwise conv after
    batchnorms_to_depthwise). Only when the conv and every op of the chain have one reader. Returns how many
    BNs were moved."""
    count, moved = 0, []
    for bn in _eval_batchnorms(gm):
        chain, node = [], bn.args[0]
        while isinstance(node, torch.fx.Node) and node.target in _MOVES and len(node.users) == 1:
            chain.insert(0, node)
            node = node.args[0]
        conv = node
        if not (chain and isinstance(conv, torch.fx.Node) and conv.target in _CONVS and len(conv.users) == 1):
            continue
        val = _val(conv)
        if val is None or val.dim() != 4 or (src := _channel_source(chain, val)) is None:
            continue
        params = [None if p is None else torch.empty_like(p).index_copy_(0, src, p) for p in _bn_tensors(gm, bn)]
        tag = f"_lw_permbn{count}"
        with gm.graph.inserting_before(chain[0]):   # between the conv and the chain, its only reader
            attrs = [None if p is None else _constant(gm, f"{tag}_{name}", p)
                     for name, p in zip(("weight", "bias", "mean", "var"), params)]
            piece = gm.graph.call_function(bn.target, (conv, *attrs, *bn.args[5:]), dict(bn.kwargs))
            moved.append(piece)
            if bn.target is aten.batch_norm.default:
                _copy_meta(piece, bn, val)
                out = piece
            else:                           # _native_batch_norm_legit_no_training: (out, mean, invstd)
                _copy_meta(piece, bn, None)
                out = gm.graph.call_function(operator.getitem, (piece, 0))
                _copy_meta(out, bn, val)
        chain[0].replace_input_with(conv, out)
        _replace_batchnorm(gm, bn, chain[-1])
        count += 1
    if finish_rewrite(gm, count):
        _fold_into_convs(gm, moved)
    return count
