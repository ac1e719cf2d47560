"""Turn a converter's "unsupported operator" failure into one LwdeployError a user can act on.

Names the operator, the target and — from the exported graph's node.meta["nn_module_stack"] — the PyTorch
module that produced it, plus what to try. Returns None when the failure is not about an operator
(then the original exception is a bug and should propagate with its traceback).

`explain_failure` covers the other failures too: a converter that breaks on a node (a coremltools frontend
TypeError, an XNNPACK pass assertion, a litert-torch lowering error) has that node in a local variable of
some frame of the traceback; from it come the operator and, via the exported graph's node metadata, the
PyTorch module — so the message still names operator, module, target and what to try.
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


_HINT_FAILED = ("a converter limitation on this operator: replace or rewrite that module (quantization/lowering.py "
                "has target-aware rewrites), try another --target, or export without --int8 if only int8 fails")


def _frames(exc: BaseException):
    """Traceback frames of `exc` and the exceptions it was raised from, innermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb, frames = exc.__traceback__, []
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        yield from reversed(frames)
        exc = exc.__cause__ or exc.__context__


def failing_node(exc: BaseException) -> tuple[str, str, dict] | None:
    """(operator, node name, node meta) of the graph node a converter was working on when it failed."""
    for frame in _frames(exc):
        for key in ("node", "n", "fx_node", "op_node"):
            value = frame.f_locals.get(key)
            if isinstance(value, torch.fx.Node) and value.op == "call_function":
                target = value.target
                name = target.name() if callable(getattr(target, "name", None)) else getattr(target, "__name__", str(target))
                return name.split("::")[-1].split(".")[0], value.name, dict(value.meta)
            kind = getattr(value, "kind", None)   # coremltools' InternalTorchIRNode (from an exported node)
            if isinstance(kind, str) and kind:
                outputs = getattr(value, "outputs", None) or [getattr(value, "name", "")]
                return kind, str(outputs[0]), {}
    return None


def _module_of(name: str, meta: dict, graph: Any) -> str | None:
    stack = meta.get("nn_module_stack")
    if not stack and graph is not None:
        gm = graph.graph_module if hasattr(graph, "graph_module") else graph
        for node in getattr(gm, "graph", gm).nodes:
            if node.name == name:
                stack = node.meta.get("nn_module_stack")
                break
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    type_name = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
    return f"{path or '<root>'} ({type_name})"


def explain_failure(exc: BaseException, target: str, graph: Any = None, model: torch.nn.Module | None = None,
                    example: torch.Tensor | None = None) -> LwdeployError | None:
    """One LwdeployError naming operator, module, target and a hint for a failed conversion, or None when
    neither the message nor the traceback names an operator (then it is a bug: let it propagate)."""
    err = unsupported_operator(exc, target, graph=graph, model=model, example=example)
    if err is not None:
        return err
    found = failing_node(exc)
    if found is None:
        return None
    op, name, meta = found
    try:
        where = _module_of(name, meta, graph)
        if where is None and model is not None and example is not None and graph is None:
            where = _module_of(name, {}, torch.export.export(model, (example,)))
    except Exception:  # the diagnosis must never hide the real failure
        where = None
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]  # the matrix keeps 500 characters, hint included
    location = f" in module {where}" if where else f" (graph node {name}; no PyTorch module recorded)"
    return LwdeployError(f"{target}: converting operator {op}{location} failed — {type(exc).__name__}: {first_line}",
                         _HINT_FAILED)
