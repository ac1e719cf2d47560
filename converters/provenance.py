"""Cheap FX node provenance while converting: share `NodeSource` trees instead of deep-copying them.

torch.fx records in every node's meta["from_node"] the chain of nodes it was made from (a `NodeSource` tree;
ExecuTorch needs it: its debug handles and the ETRecord are derived from each node's oldest ancestor). Each
time a pass re-traces the graph, `torch.fx.traceback.NodeSource.__init__` DEEP-COPIES the node's whole
provenance tree, and the tree grows one level per pass: ExecuTorch's XNNPACK lowering re-traces GhostNet's
graph ~60 times, so ~30 % of `to_edge_transform_and_lower`'s CPU time (GhostNet int8: 51 → 34 CPU s) went
into copying trees that nothing changes afterwards.

No torch/executorch config switch turns the deep copy off (torch 2.13: only inductor has a provenance
level; turning node-meta preservation off would drop "from_node", which ExecuTorch's
DebugHandleGeneratorPass asserts on). So, scoped to our conversions, `NodeSource.__deepcopy__` returns the
object itself. That is the same provenance by value: no code in torch, torchao, executorch, litert-torch or
coremltools mutates a NodeSource after building it (new trees are built, never edited: checked in the
installed versions), its equality/hash/to_dict are by content, and lists holding NodeSources are still
copied. tests/test_provenance.py checks that the .pte/.tflite bytes are the same with and without it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0


def _share(self, memo):  # NodeSource.__deepcopy__ while active: immutable, so the copy may be itself
    return self


@contextmanager
def shared_node_provenance(enabled: bool = True) -> Iterator[None]:
    """Within the block, deep copies of torch.fx NodeSource trees are shared, not copied (see module doc).
    Nests; restores torch's behaviour when the outermost block ends. enabled=False: a no-op (for tests)."""
    global _depth
    if not enabled:
        yield
        return
    from torch.fx.traceback import NodeSource

    with _lock:
        if _depth == 0 and "__deepcopy__" in NodeSource.__dict__:
            # a future torch defines its own: leave it alone
            owner = False
        else:
            owner = True
            if _depth == 0:
                NodeSource.__deepcopy__ = _share
            _depth += 1
    try:
        yield
    finally:
        if owner:
            with _lock:
                _depth -= 1
                if _depth == 0 and NodeSource.__dict__.get("__deepcopy__") is _share:
                    del NodeSource.__deepcopy__
