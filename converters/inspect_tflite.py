"""Read a .tflite flatbuffer with the schema reader ai-edge-litert ships (no extra dependency).

Gives the structural facts a manifest needs: op histogram, layout TRANSPOSE / QUANTIZE / DEQUANTIZE
counts, whether each convolution runs in int8, I/O tensors with quantization parameters, metadata.
Also writes metadata entries (labels, normalisation) into a model, so an app needs no side files.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
METADATA_NAME = "lwdeploy"      # our JSON entry in Model.metadata


def _op_name(code: Any) -> str:
    # Builtin codes > 127 live in builtin_code; the deprecated int8 field holds 127 ("placeholder") then.
    value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if value == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{code.CustomCode().decode()}"
    return _OP_NAMES.get(value, str(value))


def _tensor_spec(model: Any, graph: Any, index: int) -> dict[str, Any]:
    t = graph.Tensors(index)
    spec: dict[str, Any] = {
        "name": t.Name().decode(),
        "shape": [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
        "dtype": _TYPE_NAMES.get(t.Type(), str(t.Type())).lower(),
    }
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        scales = [float(s) for s in q.ScaleAsNumpy()]
        zps = [int(z) for z in q.ZeroPointAsNumpy()] if q.ZeroPointLength() else [0] * len(scales)
        spec["quantization"] = (
            {"scale": scales[0], "zero_point": zps[0]} if len(scales) == 1
            else {"per_channel": len(scales), "axis": int(q.QuantizedDimension())}
        )
    return spec


def _requant_ratio(in_t: Any, w_t: Any, out_t: Any) -> tuple[float, float] | None:
    qs = [t.Quantization() for t in (in_t, w_t, out_t)]
    if any(q is None or not q.ScaleLength() for q in qs):
        return None
    s_in, s_out = float(qs[0].ScaleAsNumpy()[0]), float(qs[2].ScaleAsNumpy()[0])
    w = qs[1].ScaleAsNumpy()
    return s_in * float(w.min()) / s_out, s_in * float(w.max()) / s_out


# LiteRT's int8 ADD/SUB rescale the inputs to 2·max(input scales) with 20 bits of headroom, then requantize by
# 2·max(s_in) / (2^20·s_out); QuantizeMultiplierSmallerThanOneExp CHECKs that this is < 1 (add.cc, sub.cc).
_RESCALED_ELEMENTWISE = ("ADD", "SUB")
ADD_RESCALE_LIMIT = 1.0


def _add_rescale_ratio(graph: Any, op: Any) -> float | None:
    tensors = [graph.Tensors(int(i)) for i in op.InputsAsNumpy()] + [graph.Tensors(int(op.OutputsAsNumpy()[0]))]
    if any(t.Type() != schema.TensorType.INT8 for t in tensors):
        return None
    qs = [t.Quantization() for t in tensors]
    if any(q is None or not q.ScaleLength() for q in qs):
        return None
    s_in = max(float(q.ScaleAsNumpy()[0]) for q in qs[:-1])
    return 2 * s_in / (2**20 * float(qs[-1].ScaleAsNumpy()[0]))


def size_breakdown(model: Any, graph: Any, file_size: int) -> dict[str, Any]:
    """Where a .tflite's bytes go: constant data by dtype, quantization parameters, tensor names, the rest.

    Why int8 files sit above 0.25× float: per-channel quantization stores, for every output channel of a
    weight AND of its int32 bias, a float32 scale and an int64 zero point (schema `QuantizationParameters`;
    XNNPACK reads the bias scales, LiteRT needs as many zero points as scales), plus int32 biases. Vectors
    shared between tensors (tflite_pack writes each distinct one once) count once."""
    constants: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    qparams = names = 0
    vectors: set[int] = set()
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        names += len(t.Name() or b"")
        b = t.Buffer()
        if b and b not in seen:
            seen.add(b)
            n = model.Buffers(b).DataLength()
            if n:
                constants[_TYPE_NAMES.get(t.Type(), str(t.Type())).lower()] += n
        q = t.Quantization()
        if q is not None:  # a vector several tensors share (tflite_pack) is stored, and counted, once
            for vector in (q.ScaleAsNumpy(), q.MinAsNumpy(), q.MaxAsNumpy(), q.ZeroPointAsNumpy()):
                if isinstance(vector, np.ndarray) and vector.size and vector.ctypes.data not in vectors:
                    vectors.add(vector.ctypes.data)
                    qparams += vector.nbytes
    known = sum(constants.values()) + qparams + names
    return {"file": file_size, "constants": dict(constants.most_common()), "quantization_params": qparams,
            "tensor_names": names, "other": file_size - known}


def inspect_tflite(path: Path | str) -> dict[str, Any]:
    """Structural summary of a .tflite file (main subgraph)."""
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    ops = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    histogram: collections.Counter[str] = collections.Counter()
    convs = []
    requant_out_of_range: list[dict[str, Any]] = []
    add_rescale: list[dict[str, Any]] = []
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        name = ops[op.OpcodeIndex()]
        histogram[name] += 1
        if name in _RESCALED_ELEMENTWISE:
            ratio = _add_rescale_ratio(graph, op)
            if ratio is not None and ratio >= ADD_RESCALE_LIMIT:
                out_t = graph.Tensors(int(op.OutputsAsNumpy()[0]))
                add_rescale.append({"op": j, "type": name, "output": out_t.Name().decode()[-120:],
                                    "ratio": float(f"{ratio:.4g}")})
        if name in _CONV_OPS:
            inputs = op.InputsAsNumpy()
            in_t, w_t = graph.Tensors(int(inputs[0])), graph.Tensors(int(inputs[1]))
            out_t = graph.Tensors(int(op.OutputsAsNumpy()[0]))
            ratio = _requant_ratio(in_t, w_t, out_t)
            if ratio is not None and not (2.0**-32 <= ratio[0] and ratio[1] < 256.0):
                requant_out_of_range.append({"op": j, "type": name, "output": out_t.Name().decode()[-120:],
                                             "ratio": [float(f"{r:.4g}") for r in ratio]})
            convs.append({
                "op": name,
                "input": _TYPE_NAMES.get(in_t.Type()).lower(),
                "weight": _TYPE_NAMES.get(w_t.Type()).lower(),
                "int8": in_t.Type() == schema.TensorType.INT8 and w_t.Type() == schema.TensorType.INT8,
                "output_tensor": graph.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode(),
            })
    metadata = {}
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        metadata[m.Name().decode()] = int(model.Buffers(m.Buffer()).DataLength())
    conv_only = [c for c in convs if c["op"] != "FULLY_CONNECTED"]
    return {
        "inputs": [_tensor_spec(model, graph, int(i)) for i in graph.InputsAsNumpy()],
        "outputs": [_tensor_spec(model, graph, int(i)) for i in graph.OutputsAsNumpy()],
        "op_histogram": dict(histogram.most_common()),
        "op_count": sum(histogram.values()),
        "transpose": histogram.get("TRANSPOSE", 0),
        "quantize": histogram.get("QUANTIZE", 0),
        "dequantize": histogram.get("DEQUANTIZE", 0),
        # float16 weights (--fp16): FLOAT16 constants, each read through a DEQUANTIZE op
        "float16_tensors": sum(graph.Tensors(i).Type() == schema.TensorType.FLOAT16 for i in range(graph.TensorsLength())),
        "conv_ops": len(conv_only),
        "conv_ops_int8": sum(c["int8"] for c in conv_only),
        "fully_connected_int8": [c["int8"] for c in convs if c["op"] == "FULLY_CONNECTED"],
        "float_convs": [c["output_tensor"] for c in conv_only if not c["int8"]][:20],
        # XNNPACK accepts an int8 conv/FC only if input_scale·weight_scale/output_scale is in [2^-32, 256);
        # entries here make the delegate fail to prepare (typical of random weights with exploding activations)
        "requant_out_of_xnnpack_range": requant_out_of_range[:20],
        # int8 ADD/SUB whose input/output scale ratio LiteRT's kernel cannot represent: preparing it fails a
        # TFLITE_CHECK, which aborts the whole process (verify refuses such a model instead)
        "add_rescale_out_of_range": add_rescale[:20],
        "subgraphs": model.SubgraphsLength(),
        "metadata": metadata,
        "size_bytes": size_breakdown(model, graph, len(buf)),
    }


def read_metadata(path: Path | str, name: str = METADATA_NAME) -> dict[str, Any] | None:
    """Our JSON metadata entry, if present."""
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if m.Name().decode() == name:
            return json.loads(model.Buffers(m.Buffer()).DataAsNumpy().tobytes().decode())
    return None


def add_metadata(model_bytes: bytes, entries: dict[str, bytes]) -> bytes:
    """Return `model_bytes` with extra Model.metadata entries (name → raw bytes), replacing same names.

    Uses the object API of the shipped schema: unpack, append buffers, repack (tflite_pack.repack, which also
    writes each distinct quantization vector once and names tensors by module path).
    """
    from .tflite_pack import repack

    def edit(model) -> None:
        model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
        for name, data in entries.items():
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(data, dtype=np.uint8)
            model.buffers.append(buffer)
            meta = schema.MetadataT()
            meta.name = name.encode()
            meta.buffer = len(model.buffers) - 1
            model.metadata.append(meta)

    return repack(model_bytes, edit)
