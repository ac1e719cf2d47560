"""Repack a .tflite compactly: one copy of each distinct zero-point / scale vector, tensors named by module path.

Per-channel int8 stores, for every output channel of a weight AND of its int32 bias, a float32 scale and an
int64 zero point (LiteRT refuses a tensor with fewer zero points than scales). The zero points of symmetric
weights are all 0, so a model carries the same few vectors of zeros hundreds of times: in EfficientNet-B0 int8,
503 KB of a 6.2 MB file, 2.4 % of the float model's size (`converters/inspect_tflite.size_breakdown`).
A flatbuffer table refers to a vector by offset, and nothing in the format forbids two tables referring to the
same vector, so each distinct vector is written once. The model is the same model: every reader sees the same
values (tests compare the outputs bit for bit).

litert-torch and the schema's object API (`ModelT.Pack`) write every vector anew, hence this packer.

Tensor names: litert-torch names a tensor after the module stack that produced it, every level spelled
"<qualified.Class>_<attribute>" (`lwdeploy.models.mbconv.MBConvNet/torch.nn.modules.container.Sequential_blocks/
…/torch.nn.modules.conv.Conv2d_fc1;2`, ~250 bytes), with ";" between the stacks of a fused op. The profiler only
needs the module path, so each stack is written as "/" + that path (`/blocks.0.0.se.fc1;2`): EfficientNet-B0
int8 names 103 KB → 10 KB (0.0048× → 0.0005× of the float file). android_app/runner/src/module_path.cc reads both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as schema


class _SharedVectors(schema.QuantizationParametersT):
    """QuantizationParametersT whose Pack reuses already-written vectors of the same content (per builder)."""

    cache: dict[tuple[str, bytes], int]

    @classmethod
    def wrap(cls, q: schema.QuantizationParametersT, cache: dict) -> _SharedVectors:
        shared = cls.__new__(cls)
        shared.__dict__.update(q.__dict__)
        shared.cache = cache
        return shared

    def _vector(self, builder, kind: str, values, dtype) -> int | None:
        if values is None:
            return None
        a = np.ascontiguousarray(values, dtype=dtype)
        key = (kind, a.tobytes())
        if key not in self.cache:
            self.cache[key] = builder.CreateNumpyVector(a)
        return self.cache[key]

    def Pack(self, builder):  # noqa: N802 — the schema's method name
        # vectors first (a table may only refer to objects written before it starts), then the table: the same
        # fields, in the same order, as the generated QuantizationParametersT.Pack
        mins = self._vector(builder, "min", self.min, np.float32)
        maxs = self._vector(builder, "max", self.max, np.float32)
        scale = self._vector(builder, "scale", self.scale, np.float32)
        zero = self._vector(builder, "zero_point", self.zeroPoint, np.int64)
        details = self.details.Pack(builder) if self.details is not None else None
        schema.QuantizationParametersStart(builder)
        if mins is not None:
            schema.QuantizationParametersAddMin(builder, mins)
        if maxs is not None:
            schema.QuantizationParametersAddMax(builder, maxs)
        if scale is not None:
            schema.QuantizationParametersAddScale(builder, scale)
        if zero is not None:
            schema.QuantizationParametersAddZeroPoint(builder, zero)
        schema.QuantizationParametersAddDetailsType(builder, self.detailsType)
        if details is not None:
            schema.QuantizationParametersAddDetails(builder, details)
        schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
        return schema.QuantizationParametersEnd(builder)


def module_path_name(name: str) -> str:
    """A litert-torch tensor name with each module stack ("pkg.Net/pkg.Block_blocks/…") written as "/blocks.…".

    Names without a stack (I/O, "arith.constant", ";1" suffixes) and stacks of an unexpected form stay as
    they are; an already short name is returned unchanged."""
    def stack(component: str) -> str:
        if "/" not in component or component.startswith("/"):
            return component
        attrs = []
        for seg in component.split("/")[1:]:       # [0] is the root module's class
            tail = seg.rsplit(".", 1)[-1]          # "<dotted.Class>_<attr>": attr follows the class's first "_"
            _, sep, attr = tail.partition("_")
            if not (sep and attr):
                return component
            attrs.append(attr)
        return "/" + ".".join(attrs)

    return ";".join(stack(c) for c in name.split(";"))


def repack(model_bytes: bytes, edit: Callable[[schema.ModelT], None] | None = None) -> bytes:
    """`model_bytes` unpacked, changed by `edit` (if given), and packed again with shared quantization vectors
    and tensors named by module path."""
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    # Large models can keep buffer data after the flatbuffer (Buffer.offset/size; ai-edge-quantizer writes
    # them so above 256 KB). Repacking would drop those bytes: move them into the buffers first.
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) > 1 and getattr(buffer, "size", 0) > 0:
            buffer.data = np.frombuffer(model_bytes, dtype=np.uint8, count=buffer.size, offset=buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0
    if edit is not None:
        edit(model)
    cache: dict = {}
    for graph in model.subgraphs or []:
        for tensor in graph.tensors or []:
            if tensor.name:
                tensor.name = module_path_name(tensor.name.decode()).encode()
            if tensor.quantization is not None:
                tensor.quantization = _SharedVectors.wrap(tensor.quantization, cache)
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
