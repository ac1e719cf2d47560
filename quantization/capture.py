"""Graph capture for PT2E: non-strict torch.export plus the source-function tags quantizers match on.

Strict (dynamo) export records in each node's meta["source_fn_stack"] the Python function or module that
produced it; non-strict export records none. litert-torch's add / mul / cat / max-pool / adaptive-avg-pool
annotators (and ExecuTorch XNNPACK's adaptive-avg-pool one) find their nodes only through that tag
(`get_source_partitions`): untagged, a residual add stays float with DEQUANTIZE/QUANTIZE around it.

Strict export costs ~6× more (GhostNet: 6.8 vs 1.1 CPU s; it runs once per int8 target) and yields the same
aten graph here, so we export non-strict and write on each of those aten ops the tag a strict export gives
it. The tag is one node per partition, which is what strict export gives these single-op sources.
tests/test_quantization.py checks that both captures quantize to the same program.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

aten = torch.ops.aten

# aten op → the source function strict export names for it (one each annotator accepts)
SOURCE_FNS = {
    aten.add.Tensor: operator.add,
    aten.add_.Tensor: operator.iadd,
    aten.mul.Tensor: operator.mul,
    aten.mul_.Tensor: operator.imul,
    aten.cat.default: torch.cat,
    aten.max_pool2d.default: F.max_pool2d,
    aten.max_pool2d_with_indices.default: F.max_pool2d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
}


def tag_source_functions(graph: torch.fx.Graph) -> int:
    """Give every untagged node of SOURCE_FNS its strict-export source tag; returns how many were tagged."""
    tagged = 0
    for node in graph.nodes:
        fn = SOURCE_FNS.get(node.target) if node.op == "call_function" else None
        if fn is not None and not node.meta.get("source_fn_stack"):
            node.meta["source_fn_stack"] = [(node.name, fn)]
            tagged += 1
    return tagged


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The graph prepare_pt2e takes: non-strict export with source tags; strict export where non-strict fails
    (a model whose Python only dynamo can trace)."""
    try:
        graph = torch.export.export(model, (example,), strict=False).module()
    except Exception:
        return torch.export.export(model, (example,), strict=True).module()
    tag_source_functions(graph.graph)
    return graph
