"""Small helpers for rewriting torch.export FX graphs (shared by tflite_int8.py and batchnorm_fold.py)."""

from __future__ import annotations

import torch


def node_val(node) -> torch.Tensor | None:
    """The example value torch.export recorded for `node` (meta["val"]), or None."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def copy_meta(new: torch.fx.Node, old: torch.fx.Node, val) -> None:
    # nn_module_stack keeps keep-float paths and converter error messages pointing at the source module
    for key in ("nn_module_stack", "stack_trace", "from_node"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    if val is not None:
        new.meta["val"] = val


def finish_rewrite(gm: torch.fx.GraphModule, count: int) -> int:
    """End of a graph pass that changed `count` nodes: check the graph and regenerate its code (skipped when
    nothing changed: recompiling a large graph costs real time). Returns `count`."""
    if count:
        gm.graph.lint()
        gm.recompile()
    return count
