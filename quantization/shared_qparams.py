"""Int8 qparam sharing on ops that only move values, for every PT2E quantizer here.

A slice, reshape or transpose outputs values that lie on its input's int8 grid, so its output can share the
input's scale and zero point (`SharedQuantizationSpec`) and run in int8. Neither vendor quantizer does this
for every such op torch.export emits: litert-torch's list misses the training-IR forms (`slice.Tensor`,
`unflatten`, …; tflite_int8.py), and ExecuTorch's XNNPACKQuantizer shares only when the op's producer was
annotated before it, so one op missing from its list (`unflatten`, first op of a channel shuffle) leaves the
whole chain after it float. Measured (ExecuTorch int8 profile, issue #4): ShuffleNet v2 ran its 26 channel
splits and 16 shuffles in float with 47 int8↔float Converts around them; CondenseNet its 36 shuffles.
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

from lwdeploy.quantization.fx_nodes import node_val

ANNOTATION = "quantization_annotation"
aten = torch.ops.aten

# pure moves: every output element is an input element
MOVES = frozenset({
    aten.slice.Tensor, aten.slice_copy.Tensor, aten.select.int, aten.narrow.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.unflatten.int,
    aten.permute.default, aten.transpose.int, aten.clone.default, aten.contiguous.default,
})


def _zero_pad(node: torch.fx.Node) -> bool:
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)
    return value == 0


def share_qparams(gm: torch.fx.GraphModule, ops=MOVES, input_spec=None, max_rank: int | None = None) -> int:
    """Each not-yet-annotated op in `ops` whose input has an output qspec shares it (input edge and output),
    in graph order, so chains (unflatten → transpose → flatten → slice) share one range. With `input_spec`,
    one whose input is float (its producer not quantized) observes its input edge with that spec and its
    output shares that edge: PT2E then gives every reader of the float tensor one observer (implicit sharing
    of a producer's user edges), so the tensor is quantized once. A constant pad is shared only when it pads
    with zero (the observers always include 0, so zero is exact). `max_rank`: ops with a tensor of higher rank
    stay float. Returns how many ops were annotated."""
    shared = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in ops:
            continue
        if node.target is aten.constant_pad_nd.default and not _zero_pad(node):
            continue                     # a non-zero pad value may lie outside the input's range
        ann = node.meta.get(ANNOTATION)
        if ann is not None and ann._annotated:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node):
            continue
        if max_rank is not None and any(v is not None and v.dim() > max_rank for v in (node_val(prev), node_val(node))):
            continue
        pann = prev.meta.get(ANNOTATION)
        if pann is not None and pann.output_qspec is not None:
            spec = SharedQuantizationSpec(prev)
            node.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map={prev: spec}, output_qspec=spec,
                                                           _annotated=True)
        elif input_spec is not None and node_val(prev) is not None and node_val(prev).is_floating_point():
            node.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map={prev: input_spec},
                                                           output_qspec=SharedQuantizationSpec((prev, node)),
                                                           _annotated=True)
        else:
            continue
        shared += 1
    return shared
