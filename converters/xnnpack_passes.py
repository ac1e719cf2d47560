"""Skip the XNNPACK lowering passes that cannot change the graph at hand.

ExecuTorch's XnnpackBackend.preprocess runs a fixed list of 17 passes on every delegated graph. Two of them
search for decomposed subgraphs by pattern matching against the whole graph:
ConvertToUpsampleBilinear2d (4 pattern graphs) and ConvertToSDPAPass (attention patterns; it also renders the
whole graph as Python source twice for a debug log line that is usually off). On GhostNet they cost ~1.8 and
~1.1 of the 16.6 CPU s of `to_edge_transform_and_lower`, on every export, for models with no upsampling and
no attention at all.

A pattern can only match if every operator it calls occurs in the graph (SubgraphMatcher compares call
targets). So each pattern pass first looks at the graph it is handed (after the passes before it ran) and,
when none of its patterns passes that test, returns it unchanged; every other pass runs as ExecuTorch runs
it. ExecuTorch has no switch for this (the list is fixed unless a compile spec asks for the dqlinear
subset), so, scoped to our conversions, the backend's pass manager is swapped for a subclass whose list
holds the two pattern passes wrapped that way. tests/test_xnnpack_passes.py checks the .pte bytes are
unchanged.
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


def no_pattern_can_match(pass_cls: type, graph) -> bool:
    """True if `pass_cls` is a pattern pass none of whose patterns can match `graph`."""
    patterns = _pattern_passes().get(pass_cls)
    if patterns is None:
        return False
    present = _call_targets(graph)
    return not any(can_match(g.graph, present) for g in patterns())


def _skipping(pass_cls: type) -> type:
    """`pass_cls` that first looks at the graph it is given (after the passes before it ran) and, when no
    pattern can match, returns it unchanged instead of matching, recompiling and re-tracing it."""
    from torch.fx.passes.infra.pass_base import PassResult

    class Skipping(pass_cls):
        def call(self, graph_module):
            if no_pattern_can_match(pass_cls, graph_module.graph):
                return PassResult(graph_module, False)
            return super().call(graph_module)

    Skipping.__name__ = Skipping.__qualname__ = pass_cls.__name__
    return Skipping


@contextmanager
def graph_aware_xnnpack_passes(enabled: bool = True) -> Iterator[None]:
    """Within the block, XNNPACK preprocessing skips pattern passes that cannot match (see module doc).
    Nests; restores ExecuTorch's pass manager when the outermost block ends. enabled=False: a no-op."""
    global _depth
    if not enabled:
        yield
        return
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess

    base = preprocess.XNNPACKPassManager

    skipping = {p: _skipping(p) for p in _pattern_passes()}

    class GraphAwarePassManager(base):
        def __init__(self, exported_program, passes=None):
            super().__init__(exported_program, passes)
            self.passes = [skipping.get(p, p) for p in self.passes]

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
