"""Turn a converter's "unsupported operator" failure into one LwdeployError a user can act on.

Names the operator, the target and — from the exported graph's node.meta["nn_module_stack"] — the PyTorch
module that produced it, plus what to try. Returns None when the failure is not about an operator
(then the original exception is a bug and should propagate with its traceback).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lwdeploy.errors import LwdeployError

# Patterns the three converter stacks use when an operator has no lowering/kernel.
_OP_PATTERNS = (
    r"(?:aten|quantized_decomposed|torchao)(?:\.|::)([A-Za-z0-9_]+)",         # aten.foo / aten::foo
    r"op ['\"]([A-Za-z0-9_.:]+)['\"]",                                        # coremltools: op 'foo'
    r"[Ll]owering not found[^A-Za-z0-9_]+([A-Za-z0-9_.:]+)",                 # litert-torch
)
_NOT_OP = {"default", "Tensor", "Scalar", "out", "int", "float", "_ops", "ops"}


def find_operator(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        for match in re.finditer(pattern, message):
            op = match.group(1).split("::")[-1].split(".")[0]
            if op and op not in _NOT_OP:
                return op
    return None


def module_path(op: str, graph: Any) -> str | None:
    """`path (Type)` of the first module whose exported node calls `op`, or None."""
    gm = graph.graph_module if hasattr(graph, "graph_module") else graph
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        if re.search(rf"(^|[.:]){re.escape(op)}($|[.:])", target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                type_name = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
                return f"{path or '<root>'} ({type_name})"
            return "<top level>"
    return None


def unsupported_operator(
    exc: BaseException, target: str, graph: Any = None, model: torch.nn.Module | None = None,
    example: torch.Tensor | None = None, hint: str = "",
) -> LwdeployError | None:
    """An LwdeployError for `exc` if it names an operator, else None."""
    message = f"{type(exc).__name__}: {exc}"
    lowered = message.lower()
    if not any(w in lowered for w in ("not supported", "unsupported", "not implemented", "lowering not found",
                                      "no kernel", "missing out variant", "not found for op", "no lowering")):
        return None
    op = find_operator(message)
    if op is None:
        return None
    where = None
    try:
        if graph is None and model is not None and example is not None:
            graph = torch.export.export(model, (example,))
        if graph is not None:
            where = module_path(op, graph)
    except Exception:  # the diagnosis must never hide the real failure
        where = None
    location = f" in module {where}" if where else ""
    return LwdeployError(
        f"{target}: operator {op}{location} is not supported by the converter",
        hint or "replace that module with supported ops (e.g. via quantization/lowering.py), "
        "try another --target, or export without --int8 if it fails only when quantized",
    )
