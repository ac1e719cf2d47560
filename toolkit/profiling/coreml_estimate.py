"""Core ML has no runtime on Linux, so its "profile" is a static per-op cost estimate from the ML Program spec:
a roofline over MACs and bytes touched with fixed, stated device constants. The report says kind = "estimate";
nothing here was measured. Layer names are the MIL op outputs (FX node names); the spec keeps no module stack,
so `module` is null.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from ..errors import LwdeployError
from .report import SCHEMA_VERSION

# Stated, not measured: a mid-range phone CPU/GPU running fp16 (order of magnitude only).
MACS_PER_S = 100e9
BYTES_PER_S = 20e9
OP_OVERHEAD_S = 5e-6
_FREE = {"const", "cast", "reshape", "squeeze", "expand_dims", "identity"}
_BYTES = {"float16": 2, "float32": 4, "int8": 1, "uint8": 1, "int32": 4}


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:  # an .mlpackage is a folder: hash names and contents in a fixed order
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def _dims(value_type) -> list[int] | None:
    if value_type.WhichOneof("type") != "tensorType":
        return None
    dims = []
    for d in value_type.tensorType.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return None
        dims.append(int(d.constant.size))
    return dims


def estimate_coreml(artifact: Path) -> dict:
    try:
        import coremltools as ct
        from coremltools.proto import FeatureTypes_pb2  # noqa: F401  (proto module present)
    except ImportError:
        raise LwdeployError("Core ML estimates need coremltools", "pip install coremltools") from None
    spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise LwdeployError(f"{artifact.name} is a '{spec.WhichOneof('Type')}' model",
                            "only ML Program (.mlpackage) models are estimated; convert with convert_to='mlprogram'")
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    shapes: dict[str, list[int]] = {}
    for inp in fn.inputs:
        d = _dims(inp.type)
        if d is not None:
            shapes[inp.name] = d
    layers = []
    for op in block.operations:
        for out in op.outputs:
            d = _dims(out.type)
            if d is not None:
                shapes[out.name] = d
        if op.type in _FREE or not op.outputs:
            continue

        def arg(name):
            a = op.inputs.get(name)
            return shapes.get(a.arguments[0].name) if a and a.arguments and a.arguments[0].name else None

        out_shape = shapes.get(op.outputs[0].name) or []
        out_elems = math.prod(out_shape) if out_shape else 0
        macs = 0
        w = arg("weight")
        if op.type in ("conv", "conv_transpose") and w:
            macs = out_elems * math.prod(w[1:])  # each output: Cin/groups * kh * kw MACs
        elif op.type == "linear" and w:
            macs = out_elems * w[-1]
        elif op.type == "matmul":
            x = arg("x")
            macs = out_elems * (x[-1] if x else 1)
        in_elems = sum(math.prod(shapes[a.name]) for v in op.inputs.values() for a in v.arguments
                       if a.name in shapes and shapes[a.name])
        moved = (in_elems + out_elems) * 2  # fp16 activations and weights
        seconds = max(macs / MACS_PER_S, moved / BYTES_PER_S) + OP_OVERHEAD_S
        ms = seconds * 1e3
        layers.append({"name": op.outputs[0].name, "op_type": op.type, "module": None,
                       "ms": {"p10": ms, "p50": ms, "p90": ms}, "compute_unit": "estimate (no device)",
                       "kernels": [f"{macs} MACs, {moved} bytes"]})
    total = sum(l["ms"]["p50"] for l in layers)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "estimate",
        "device": {"model": "static estimate (no device)", "os": "n/a", "abi": "n/a", "runtime": "coreml",
                   "runtime_version": f"coremltools {getattr(ct, '__version__', 'unknown')}"},
        "artifact": {"path": str(artifact), "sha256": _sha256_path(artifact)},
        "threads": 1, "delegate": "none", "warmup_runs": 0, "runs": 1,
        "total_ms": {"p10": total, "p50": total, "p90": total},
        "layers_sum_ms": {"p10": total, "p50": total, "p90": total},
        "mapping": "none: the Core ML spec keeps FX node names but no module stack",
        "notes": ["ESTIMATE, not a measurement: Linux has no Core ML runtime",
                  f"roofline with {MACS_PER_S / 1e9:.0f} GMAC/s, {BYTES_PER_S / 1e9:.0f} GB/s, "
                  f"{OP_OVERHEAD_S * 1e6:.0f} us per op; ranks layers, does not predict a phone"],
        "producer": "lwdeploy.profiling.coreml_estimate",
        "layers": layers,
    }
