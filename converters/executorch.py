"""ExecuTorch: torch.export → to_edge_transform_and_lower(XnnpackPartitioner) → to_executorch → .pte.

The three typed stages are kept as values (ExecuTorchStages) so callers and tests can inspect each one:
ExportedProgram → EdgeProgramManager → ExecutorchProgramManager. int8: PT2E with XNNPACKQuantizer first
(quantization/pt2e.py); the Q/DQ pairs are then consumed by the XNNPACK delegate as int8 kernels.
verify() runs the .pte with the ExecuTorch Python runtime and reads delegate/operator facts from the file.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lwdeploy.atomic import atomic_path
from lwdeploy.errors import LwdeployError

from .base import ConversionResult, Converter, ExportRequest, Verification
from .diagnose import unsupported_operator
from .fidelity import compare, time_calls

WARMUP, TIMED_RUNS = 20, 50
_NON_OPS = {"executorch_call_delegate", "getitem", "<built-in function getitem>"}


@dataclass
class ExecuTorchStages:
    exported: Any            # torch.export.ExportedProgram (float, or PT2E-quantized Q/DQ graph)
    edge: Any                # executorch.exir.EdgeProgramManager, after XNNPACK partitioning
    program: Any             # executorch.exir.ExecutorchProgramManager (.buffer is the .pte)
    quantization: dict[str, Any]
    delegation: dict[str, Any]   # read from `edge` before to_executorch (which adds memory-planning nodes)


def delegation_of(edge: Any) -> dict[str, Any]:
    """How much of the graph XNNPACK took: partitions, and which ops stayed outside (run by portable kernels)."""
    gm = edge.exported_program().graph_module
    outside: collections.Counter[str] = collections.Counter()
    partitions = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            partitions += 1
        elif name not in _NON_OPS and "getitem" not in name:
            outside[str(node.target).replace("aten.", "").split(".default")[0]] += 1
    return {"delegate_partitions": partitions, "ops_outside_delegate": dict(outside.most_common())}


class ExecuTorchConverter(Converter):
    name = "executorch"
    suffix = ".pte"

    def lower(self, req: ExportRequest, generate_etrecord: bool = False) -> ExecuTorchStages:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        model, example = req.model.eval(), req.example
        quantization: dict[str, Any] = {"scheme": "none (float32)"}
        graph_for_errors = None
        try:
            if req.int8:
                from lwdeploy.quantization import quantize

                qm = quantize(model, example, "executorch", req.calib, keep_float=req.options.get("keep_float"))
                model = qm.module
                quantization = {"scheme": "int8 static (PT2E), per-channel weights", **qm.scheme}
            exported = torch.export.export(model, (example,))
            graph_for_errors = exported
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                               generate_etrecord=generate_etrecord)
            delegation = delegation_of(edge)
            program = edge.to_executorch()
        except LwdeployError:
            raise
        except Exception as e:
            err = unsupported_operator(e, self.name, graph=graph_for_errors, model=req.model, example=example)
            if err is not None:
                raise err from e
            raise
        return ExecuTorchStages(exported, edge, program, quantization, delegation)

    def convert(self, req: ExportRequest) -> ConversionResult:
        t0 = time.perf_counter()
        want_etrecord = bool(req.options.get("etrecord", True))
        stages = self.lower(req, generate_etrecord=want_etrecord)
        with atomic_path(req.out_path) as tmp:
            tmp.write_bytes(stages.program.buffer)
        details = stages.delegation
        notes = [f"XNNPACK delegate: {details['delegate_partitions']} partition(s); outside the delegate: "
                 + (", ".join(f"{k}×{v}" for k, v in details["ops_outside_delegate"].items()) or "nothing")]
        extra: list[Path] = []
        if want_etrecord:
            etrecord_path = req.out_path.with_suffix(".etrecord")
            with atomic_path(etrecord_path) as tmp:
                stages.program.get_etrecord().save(str(tmp))
            extra.append(etrecord_path)
            notes.append(f"ETRecord written to {etrecord_path.name} (link runtime ETDump events to the graph)")
        return ConversionResult(req.out_path, self.name, stages.quantization, notes,
                                round(time.perf_counter() - t0, 2), details=details, extra_files=extra)

    def verify(self, path: Path, inputs: torch.Tensor, reference: torch.Tensor) -> Verification:
        from executorch.runtime import Runtime

        checks = inspect_pte(path)
        try:
            method = Runtime.get().load_program(Path(path)).load_method("forward")
        except RuntimeError as e:
            # The XNNPACK delegate compiles its graph at load time and can refuse it (e.g.
            # xnn_status_unsupported_parameter for an int8 requantization scale out of its range). The
            # delegate is baked into the .pte, so there is no fallback: report it instead of a number.
            checks["loads"] = f"FAILED: {str(e).strip()[:300]}"
            return Verification(False, checks, None, None, [
                "the ExecuTorch runtime could not load this program (XNNPACK refused it at init; see the "
                "runtime log above, e.g. 'XNN Runtime creation failed'): no fidelity or latency"])
        checks["loads"] = "ok"
        outputs = [method.execute((x.unsqueeze(0).contiguous(),))[0] for x in inputs]
        output = torch.cat([o.reshape(1, -1) for o in outputs])
        example = (inputs[:1].contiguous(),)
        latency = time_calls(lambda: method.execute(example), WARMUP, TIMED_RUNS)
        notes = [f"ExecuTorch Python runtime (pybindings), XNNPACK; latency after {WARMUP} warm-up runs"]
        return Verification(True, checks, compare(output, reference), latency, notes)


def inspect_pte(path: Path | str) -> dict[str, Any]:
    """Facts read from the .pte itself: inputs/outputs, delegates by backend, non-delegated kernels."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.scalar_type import ScalarType

    pte = deserialize_pte_binary(Path(path).read_bytes())
    program = getattr(pte, "program", pte)
    plan = program.execution_plan[0]

    def tensor(i: int) -> dict[str, Any]:
        val = plan.values[i].val
        sizes = list(getattr(val, "sizes", []))
        dtype = getattr(val, "scalar_type", None)
        name = ScalarType(int(dtype)).name.lower() if dtype is not None else "?"
        return {"shape": sizes, "dtype": {"float": "float32", "char": "int8", "byte": "uint8"}.get(name, name)}

    backends = collections.Counter(d.id for d in plan.delegates)
    return {
        "method": plan.name,
        "inputs": [tensor(i) for i in plan.inputs],
        "outputs": [tensor(i) for i in plan.outputs],
        "delegates": dict(backends),
        "delegate_partitions": len(plan.delegates),
        "kernels_outside_delegate": sorted({op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators}),
    }
