"""Skip the XNNPACK lowering passes that cannot change the graph at hand.

ExecuTorch's XnnpackBackend.preprocess runs a fixed list of 17 passes on every delegated graph, and nearly
every one ends by re-tracing the whole graph (ExportPass.call: fake-tensor propagation, recompile), whether
it edited anything or not: ~0.5–1 CPU s each on GhostNet. `python benchmarks/et_lowering_profile.py
ghostnet_100 --int8` measured the passes at 11.3 of the 26.7 CPU s of `to_edge_transform_and_lower`.

Most passes only edit at nodes of particular operators: PReLU reshapes `_prelu_kernel`, the conv1d pass
unsqueezes 1-D convolutions, RemoveGetItemPass rewrites `max_pool2d_with_indices` / `max.dim`, and so on
(read in executorch 1.5.1; the gates below name each). When none of those operators occurs in the graph the
pass is handed (after the passes before it ran), it would re-trace an unchanged graph, so it returns the
graph unchanged instead. The two pattern passes (bilinear upsample, SDPA) are gated the same way: a pattern
can only match if every operator it calls occurs in the graph (SubgraphMatcher compares call targets).
Every other pass runs as ExecuTorch runs it.

ExecuTorch has no switch for this (the list is fixed unless a compile spec asks for the dqlinear subset), so,
scoped to our conversions, the backend's pass manager is swapped for a subclass whose list holds the gated
passes. tests/test_xnnpack_passes.py checks the .pte bytes are unchanged.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_lock = threading.Lock()
_depth = 0


def _pattern_passes() -> dict[type, Callable[[], list]]:
    """Pattern-matching pass → its pattern graphs (ExecuTorch builds and caches them once per process)."""
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import ConvertToUpsampleBilinear2d
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    return {ConvertToUpsampleBilinear2d: bilinear_2d.get_graphs, ConvertToSDPAPass: sdpa.get_graphs}


def _call_targets(graph) -> list:
    # a list, compared with ==: edge-dialect operator objects are matched by equality, as SubgraphMatcher does
    out: list = []
    for node in graph.nodes:
        if node.op == "call_function" and not any(node.target == t for t in out):
            out.append(node.target)
    return out


def can_match(pattern_graph, present: list) -> bool:
    """Whether `pattern_graph` could match a graph whose call targets are `present` (necessary, not sufficient)."""
    return all(any(t == p for p in present) for t in _call_targets(pattern_graph))


# An operator every pattern graph of the pass calls (checked by tests/test_xnnpack_passes.py). Building the
# pattern graphs costs ~2.7 CPU s per process (both passes); a graph without this operator is skipped before
# they are built.
PATTERN_SENTINELS = {"ConvertToUpsampleBilinear2d": "aten.upsample_bilinear2d.vec",
                     "ConvertToSDPAPass": "aten._softmax.default"}


def no_pattern_can_match(pass_cls: type, graph) -> bool:
    """True if `pass_cls` is a pattern pass none of whose patterns can match `graph`."""
    patterns = _pattern_passes().get(pass_cls)
    if patterns is None:
        return False
    sentinel = PATTERN_SENTINELS.get(pass_cls.__name__)
    if sentinel and not any(_op_name(n) == sentinel for n in graph.nodes):
        return True
    present = _call_targets(graph)
    return not any(can_match(g.graph, present) for g in patterns())


def _op_name(node) -> str:
    return getattr(node.target, "__name__", "") if node.op == "call_function" else ""


def _has_op(*names: str) -> Callable:
    return lambda graph: any(_op_name(n) in names for n in graph.nodes)


def _has_conv1d(graph) -> bool:
    # Conv1dUnsqueezePass: aten.convolution whose kernel is 3-D; a 1-D convolution's output is 3-D too
    return any(_op_name(n) == "aten.convolution.default" and getattr(n.meta.get("val"), "ndim", 0) == 3
               for n in graph.nodes)


def _has_long_cat(graph) -> bool:
    # DecomposeConcatenate: splits a cat of more than 5 inputs (XNNPACK's concatenate takes up to 5)
    return any(_op_name(n) == "aten.cat.default" and len(n.args[0]) > 5 for n in graph.nodes)


def _has_dim_order_op(graph) -> bool:
    from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsMap

    return any(n.op == "call_function" and n.target in MemoryFormatOpsMap for n in graph.nodes)


def _has_custom_meta(graph) -> bool:
    # PropagateCustomMetaPass copies node.meta["custom"] from a producer to its quantize/dequantize nodes
    return any("custom" in n.meta for n in graph.nodes)


_BATCH_NORMS = ("aten.native_batch_norm.default", "aten._native_batch_norm_legit_no_training.default")


def _gates() -> dict[type, Callable]:
    """XNNPACK pass → may_edit(graph): False means the pass would leave this graph as it is."""
    from executorch.backends.transforms.remove_getitem_op import RemoveGetItemPass
    from executorch.backends.xnnpack._passes.conv1d_unsqueeze_pass import Conv1dUnsqueezePass
    from executorch.backends.xnnpack._passes.decompose_batch_norm import DecomposeBatchNorm
    from executorch.backends.xnnpack._passes.decompose_cat import DecomposeConcatenate
    from executorch.backends.xnnpack._passes.fuse_batch_norm import FuseBatchNormPass
    from executorch.backends.xnnpack._passes.prelu_reshape_pass import PReLUReshapePass
    from executorch.backends.xnnpack._passes.propagate_custom_meta_pass import PropagateCustomMetaPass
    from executorch.exir.passes.memory_format_ops_pass import DimOrderOpsRevertPass

    gates: dict[type, Callable] = {p: (lambda graph, p=p: not no_pattern_can_match(p, graph))
                                   for p in _pattern_passes()}
    gates.update({
        DimOrderOpsRevertPass: _has_dim_order_op,
        Conv1dUnsqueezePass: _has_conv1d,
        PReLUReshapePass: _has_op("aten._prelu_kernel.default"),
        RemoveGetItemPass: _has_op("aten.max_pool2d_with_indices.default", "aten.max.dim"),
        DecomposeConcatenate: _has_long_cat,
        FuseBatchNormPass: _has_op(*_BATCH_NORMS),  # a conv/linear followed by a batch norm
        DecomposeBatchNorm: _has_op(*_BATCH_NORMS),
        PropagateCustomMetaPass: _has_custom_meta,
    })
    return gates


def may_edit(pass_cls: type, graph) -> bool:
    """False if `pass_cls` is a gated pass that would leave `graph` unchanged; True otherwise."""
    gate = _gates().get(pass_cls)
    return True if gate is None else gate(graph)


def _gated(pass_cls: type, may_edit_graph: Callable) -> type:
    """`pass_cls` that first looks at the graph it is given (after the passes before it ran) and, when it
    cannot edit it, returns it unchanged instead of walking, recompiling and re-tracing it."""
    from torch.fx.passes.infra.pass_base import PassResult

    class Gated(pass_cls):
        def call(self, graph_module):
            if not may_edit_graph(graph_module.graph):
                return PassResult(graph_module, False)
            return super().call(graph_module)

    Gated.__name__ = Gated.__qualname__ = pass_cls.__name__
    return Gated


@contextmanager
def graph_aware_xnnpack_passes(enabled: bool = True) -> Iterator[None]:
    """Within the block, XNNPACK preprocessing skips passes that cannot edit the graph (see module doc).
    Nests; restores ExecuTorch's pass manager when the outermost block ends. enabled=False: a no-op."""
    global _depth
    if not enabled:
        yield
        return
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess

    base = preprocess.XNNPACKPassManager

    gated = {p: _gated(p, gate) for p, gate in _gates().items()}

    class GraphAwarePassManager(base):
        def __init__(self, exported_program, passes=None):
            super().__init__(exported_program, passes)
            self.passes = [gated.get(p, p) for p in self.passes]

    with _lock:
        if _depth == 0:
            preprocess.XNNPACKPassManager = GraphAwarePassManager
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and preprocess.XNNPACKPassManager is not base:
                preprocess.XNNPACKPassManager = base
