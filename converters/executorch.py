"""ExecuTorch: torch.export → to_edge_transform_and_lower(XnnpackPartitioner) → to_executorch → .pte.

The three typed stages are kept as values (ExecuTorchStages) so callers and tests can inspect each one:
ExportedProgram → EdgeProgramManager → ExecutorchProgramManager. int8: PT2E with XNNPACKQuantizer first
(quantization/pt2e.py); the Q/DQ pairs are then consumed by the XNNPACK delegate as int8 kernels.
verify() runs the .pte with the ExecuTorch Python runtime and reads delegate/operator facts from the file.
"""

from __future__ import annotations

import collections
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lwdeploy.atomic import atomic_path
from lwdeploy.errors import LwdeployError

from .base import ConversionResult, Converter, ExportRequest, Verification
from .diagnose import explain_failure
from .fidelity import compare, time_calls
from .provenance import shared_node_provenance
from .xnnpack_passes import graph_aware_xnnpack_passes
from .timing import StageTimer

WARMUP, TIMED_RUNS = 20, 50
_NON_OPS = {"executorch_call_delegate", "getitem", "<built-in function getitem>"}


@dataclass
class ExecuTorchStages:
    exported: Any            # torch.export.ExportedProgram (float, or PT2E-quantized Q/DQ graph)
    edge: Any                # executorch.exir.EdgeProgramManager, after XNNPACK partitioning
    program: Any             # executorch.exir.ExecutorchProgramManager (.buffer is the .pte)
    quantization: dict[str, Any]
    delegation: dict[str, Any]   # read from `edge` before to_executorch (which adds memory-planning nodes)


def _op_key(target: Any) -> str:
    """'convolution' for aten ops, 'namespace::op' for others (edge ops print as a long schema otherwise)."""
    name = target.name() if callable(getattr(target, "name", None)) else getattr(target, "__name__", str(target))
    return name[len("aten::"):] if name.startswith("aten::") else name


def delegation_of(edge: Any) -> dict[str, Any]:
    """How much of the graph the delegate took: partitions, the ops inside them (from each lowered module's
    original graph), and which ops stayed outside (run by portable kernels)."""
    gm = edge.exported_program().graph_module
    outside: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    partitions = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            partitions += 1
            lowered = getattr(gm, str(node.args[0].target), None)
            original = getattr(lowered, "original_module", None)
            for inner in (original.graph_module.graph.nodes if original is not None else ()):
                inner_name = getattr(inner.target, "__name__", str(inner.target))
                if inner.op == "call_function" and "getitem" not in inner_name:
                    inside[_op_key(inner.target)] += 1
        elif name not in _NON_OPS and "getitem" not in name:
            outside[_op_key(node.target)] += 1
    return {"delegate_partitions": partitions, "ops_in_delegate": dict(inside.most_common()),
            "ops_outside_delegate": dict(outside.most_common())}


def _partitioner(delegate: str, req: ExportRequest):
    """XNNPACK (runs here and on Android/iOS CPUs) or Core ML (iOS/macOS only: ANE/GPU/CPU)."""
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    if delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        target = req.options.get("min_target", "iOS17")
        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if req.options.get("fp16") else ct.precision.FLOAT32,
        )
        return CoreMLPartitioner(compile_specs=specs)
    raise LwdeployError(f"unknown ExecuTorch delegate {delegate!r}", "use --delegate xnnpack or --delegate coreml")


def _transform_passes(delegate: str) -> list:
    """Edge passes run before partitioning.

    torch.export writes `flatten`/`reshape` of a permuted tensor as a copy (`_clone_dim_order`) then a view. In
    edge IR `permute_copy` already returns a dense tensor, so the copy is a no-op, and ExecuTorch removes it, but
    only inside the XNNPACK backend, after partitioning. Until then XNNPACK's partitioner takes a clone in float
    only: in a channel shuffle (permute → flatten) the int8 tensor was converted to float, reshaped and converted
    back, two extra passes over it per shuffle (ShuffleNet v2: 32 converts). Removing the no-op copies first keeps
    the reshape int8 (and drops the dequantize → quantize pair around the copy)."""
    if delegate != "xnnpack":
        return []
    from executorch.backends.transforms.remove_clone_ops import RemoveCloneOpsTransform

    return [RemoveCloneOpsTransform(preserve_input_output_copies=True)]


class ExecuTorchConverter(Converter):
    name = "executorch"
    suffix = ".pte"

    def lower(self, req: ExportRequest, generate_etrecord: bool = False,
              timer: StageTimer | None = None) -> ExecuTorchStages:
        from executorch.exir import to_edge_transform_and_lower

        timer = timer or StageTimer()
        model, example = req.model.eval(), req.example
        delegate = req.options.get("delegate", "xnnpack")
        nhwc = bool(req.options.get("nhwc"))
        if nhwc and delegate != "xnnpack":
            raise LwdeployError("--nhwc is for the XNNPACK delegate (its layout pass reads a channels-last input as is)",
                                "leave out --nhwc with --delegate coreml")
        if nhwc:
            # An example in channels-last memory gives the program's input that dim order (shape stays (1,3,H,W)),
            # and XNNPACK's layout pass then reads it as the NHWC it already is: no transpose at the input.
            example = example.contiguous(memory_format=torch.channels_last)
        quantization: dict[str, Any] = {"scheme": "none (float32)"}
        graph_for_errors = None
        partitioner = _partitioner(delegate, req)
        try:
            with shared_node_provenance():  # ~30 % less CPU in to_edge_transform_and_lower
                if req.int8:
                    from lwdeploy.quantization import export_options, quantize

                    qm = req.quantized or quantize(model, example, "executorch", req.calib, timings=timer,
                                                   **export_options(req.options))
                    model = qm.module
                    quantization = {"scheme": "int8 static (PT2E), per-channel weights", **qm.scheme}
                with timer("torch_export"):
                    # the pipeline exports a shared int8 program once to hand it to a worker: reuse that one
                    # (an NCHW export: with --nhwc the program is exported again from its channels-last example)
                    shared = None if nhwc else getattr(req.quantized, "exported", None)
                    exported = shared or torch.export.export(model, (example,))
                graph_for_errors = exported
                with timer("to_edge_transform_and_lower"), graph_aware_xnnpack_passes():
                    edge = to_edge_transform_and_lower(exported, partitioner=[partitioner],
                                                       transform_passes=_transform_passes(delegate),
                                                       generate_etrecord=generate_etrecord)
                delegation = {"delegate": delegate, **delegation_of(edge)}
                with timer("to_executorch"):
                    program = edge.to_executorch()
        except LwdeployError:
            raise
        except Exception as e:
            err = explain_failure(e, self.name, graph=graph_for_errors, model=req.model, example=example)
            if err is not None:
                raise err from e
            raise
        return ExecuTorchStages(exported, edge, program, quantization, delegation)

    def convert(self, req: ExportRequest) -> ConversionResult:
        t0 = time.perf_counter()
        timer = StageTimer()
        want_etrecord = bool(req.options.get("etrecord", True))
        stages = self.lower(req, generate_etrecord=want_etrecord, timer=timer)
        with timer("serialize"), atomic_path(req.out_path) as tmp:
            tmp.write_bytes(stages.program.buffer)
        details = stages.delegation
        notes = [f"{details['delegate']} delegate: {details['delegate_partitions']} partition(s); outside the delegate: "
                 + (", ".join(f"{k}×{v}" for k, v in details["ops_outside_delegate"].items()) or "nothing")]
        extra: list[Path] = []
        if want_etrecord:
            etrecord_path = req.out_path.with_suffix(".etrecord")
            with timer("etrecord_save"), atomic_path(etrecord_path) as tmp:
                stages.program.get_etrecord().save(str(tmp))
            extra.append(etrecord_path)
            notes.append(f"ETRecord written to {etrecord_path.name} (link runtime ETDump events to the graph)")
        details["reproducible"] = {
            ".pte": "byte-identical for the same command and seed (tested)",
            **({".etrecord": "NOT byte-identical run to run: ExecuTorch stores Python object ids (id() of FX graphs) "
                "as graph_id in each node's provenance ('from_node') and as export_graph_id, and the zip members "
                "carry the save time. The Inspector only needs those ids to agree within one file, which they do; "
                "the .pte it describes is identical"} if want_etrecord else {}),
        }
        return ConversionResult(req.out_path, self.name, stages.quantization, notes,
                                round(time.perf_counter() - t0, 2), details=details, extra_files=extra,
                                timings=timer.as_dict())

    def verify(self, path: Path, inputs: torch.Tensor, reference: torch.Tensor) -> Verification:
        from executorch.runtime import Runtime

        timer = StageTimer()
        with timer("inspect"):
            checks = inspect_pte(path)
        if "CoreMLBackend" in checks["delegates"]:
            # The Core ML delegate runs only where Core ML does (iOS/macOS): the ExecuTorch runtime here has no
            # CoreMLBackend, so loading would fail. Say so and report the structure instead of numbers.
            checks["loads"] = "not attempted: CoreMLBackend needs iOS/macOS"
            return Verification(False, checks, None, None, [
                "Core ML-delegate .pte: structural checks only on Linux (delegates and the kernels outside them, "
                "read from the file); fidelity and latency need an Apple device or macOS"], timings=timer.as_dict())
        try:
            with timer("load"):
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
        layout = checks["inputs"][0].get("layout", "NCHW")
        with timer("fidelity"):
            outputs = [method.execute((as_pte_input(x.unsqueeze(0), layout),))[0] for x in inputs]
            output = torch.cat([o.reshape(1, -1) for o in outputs])
        example = (as_pte_input(inputs[:1], layout),)
        with timer("latency"):
            latency = time_calls(lambda: method.execute(example), WARMUP, TIMED_RUNS)
        notes = [f"ExecuTorch Python runtime (pybindings), XNNPACK; latency after {WARMUP} warm-up runs"]
        return Verification(True, checks, compare(output, reference), latency, notes, timings=timer.as_dict())


def as_pte_input(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An NCHW image batch in the memory order the program reads. The runtime copies an input's bytes without
    looking at its strides: an NCHW-contiguous tensor given to an NHWC (channels-last) input is silently misread."""
    return x.contiguous(memory_format=torch.channels_last) if layout == "NHWC" else x.contiguous()


def inspect_pte(path: Path | str, xnnpack_nodes: bool = True) -> dict[str, Any]:
    """Facts read from the .pte itself: inputs/outputs (with their layout), delegates by backend, non-delegated
    kernels, and (`xnnpack_nodes`) the node kinds inside the XNNPACK delegates."""
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
        out = {"shape": sizes, "dtype": {"float": "float32", "char": "int8", "byte": "uint8"}.get(name, name)}
        dim_order = list(getattr(val, "dim_order", None) or range(len(sizes)))
        if len(sizes) == 4:
            out["layout"] = "NHWC" if dim_order == [0, 2, 3, 1] else "NCHW"
        return out

    backends = collections.Counter(d.id for d in plan.delegates)
    xnn: dict[str, Any] = {"xnnpack_nodes": collections.Counter(), "transpose": 0, "quantize": 0, "dequantize": 0}
    try:
        for delegate in plan.delegates if xnnpack_nodes else ():
            if delegate.id == "XnnpackBackend":
                facts = xnnpack_graph_facts(bytes(program.backend_delegate_data[delegate.processed.index].data))
                xnn["xnnpack_nodes"].update(facts.pop("nodes"))
                for k, v in facts.items():
                    xnn[k] += v
        xnn["xnnpack_nodes"] = dict(xnn["xnnpack_nodes"].most_common())
    except (OSError, ValueError, subprocess.CalledProcessError) as e:  # a fact to report, not a reason to fail
        xnn = {"xnnpack_nodes": f"not read: {type(e).__name__}: {str(e)[:200]}"}
    return {
        "method": plan.name,
        "inputs": [tensor(i) for i in plan.inputs],
        "outputs": [tensor(i) for i in plan.outputs],
        "delegates": dict(backends),
        "delegate_partitions": len(plan.delegates),
        "kernels_outside_delegate": sorted({op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators}),
        **(xnn if xnn["xnnpack_nodes"] else {}),
    }


def xnnpack_graph_facts(blob: bytes) -> dict[str, Any]:
    """What one XNNPACK delegate payload holds: its node kinds ({'XNNConv2d': 52, …}), and the counts TFLite's
    checks call transpose / quantize / dequantize: transposes that move data (of a tensor with two or more dims
    longer than 1: the input's NCHW → NHWC, a shuffle's; not the pooled 1×1×C features' reshape to NCHW), and
    Converts float → int8 and int8 → float (float islands inside the delegate).

    ExecuTorch writes no reader for its XNNPACK graph, only a writer (JSON → flatc); this reads it back the same
    way, with flatc and the schema the wheel ships."""
    import json
    import re
    import tempfile

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader, _get_schema_bytes
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(blob[:XNNHeader.EXPECTED_LENGTH])
    with tempfile.TemporaryDirectory(prefix="lwdeploy-xnn-") as tmp:
        schema, graph = Path(tmp) / "schema.fbs", Path(tmp) / "graph.bin"
        schema.write_bytes(_get_schema_bytes())
        graph.write_bytes(blob[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
        _flatc_decompile(tmp, str(schema), str(graph), ["--raw-binary"])
        text = (Path(tmp) / "graph.json").read_text()
    # flatc writes non-finite clamp bounds as bare inf/nan, which JSON has no literal for; no value here is read
    g = json.loads(re.sub(r"(?<![\w\"])(-?inf|nan)(?![\w\"])", "0", text))
    values = {}
    for v in g.get("xvalues", []):
        t = v["xvalue_union"].get("tensor_value", v["xvalue_union"])
        values[t.get("id_out")] = (t.get("datatype", ""), t.get("dims") or [])
    facts = {"nodes": collections.Counter(), "transpose": 0, "quantize": 0, "dequantize": 0}
    for n in g.get("xnodes", []):
        kind, node = n["xnode_union_type"], n["xnode_union"]
        facts["nodes"][kind] += 1
        src, dst = values.get(node.get("input_id"), ("", [])), values.get(node.get("output_id"), ("", []))
        if kind == "XNNStaticTranspose" and sum(d > 1 for d in src[1]) >= 2:
            facts["transpose"] += 1
        elif kind == "XNNConvert" and src[0].endswith("fp32") and not dst[0].endswith("fp32"):
            facts["quantize"] += 1
        elif kind == "XNNConvert" and dst[0].endswith("fp32") and not src[0].endswith("fp32"):
            facts["dequantize"] += 1
    return facts
