"""LiteRT (TensorFlow Lite): litert-torch convert → .tflite; verified with the LiteRT interpreter (XNNPACK).

int8: PT2E with litert-torch's own PT2EQuantizer (quantization/pt2e.py), then litert_torch.convert with
QuantConfig(pt2e_quantizer=…) so the Q/DQ pairs become int8 kernels (STATIC qdq conversion mode). The
int8 model has int8 input/output tensors; verify() quantizes inputs and dequantizes outputs with the
tensors' own scale/zero point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from lwdeploy.atomic import atomic_path
from lwdeploy.errors import LwdeployError

from .base import ConversionResult, Converter, ExportRequest, Verification
from .diagnose import explain_failure
from .fidelity import compare, time_calls
from .provenance import shared_node_provenance
from .timing import StageTimer
from .inspect_tflite import METADATA_NAME, add_metadata, inspect_tflite
from .tflite_pack import repack

# int8 XNNPACK kernels in LiteRT reach steady state only after ~100 invokes (weight repacking and cache
# warm-up); fewer warm-ups made the median 20-40 % slower in our runs. Float settles much sooner.
WARMUP_INT8, WARMUP_FLOAT, TIMED_RUNS = 100, 20, 50
THREADS = 2


class TFLiteConverter(Converter):
    name = "tflite"
    suffix = ".tflite"

    def convert(self, req: ExportRequest) -> ConversionResult:
        import litert_torch

        t0 = time.perf_counter()
        timer = StageTimer()
        opts = {"nhwc": False, "metadata": True, "fp16": False, **req.options}
        if opts["fp16"] and req.int8:
            raise LwdeployError("tflite: --fp16 (float16 weights) and --int8 are two different precisions",
                                "export once with --fp16 and once with --int8, or leave one out")
        model, example, calib = req.model.eval(), req.example, list(req.calib)
        notes: list[str] = []
        if opts["nhwc"]:
            # The wrapper permutes NHWC → NCHW first; litert-torch's layout pass cancels it against its
            # own NCHW → NHWC transpose, so the graph starts directly with NHWC convolutions.
            model = litert_torch.to_channel_last_io(model, args=[0]).eval()
            example = example.permute(0, 2, 3, 1).contiguous()
            calib = [c.permute(0, 2, 3, 1).contiguous() for c in calib]
            notes.append("input layout NHWC (1,H,W,3)")
        quantization: dict = {"scheme": "none (float32)"}
        try:
            with shared_node_provenance():  # cheaper torch.export/decompositions (provenance.py)
                if req.int8:
                    from litert_torch.quantize.quant_config import QuantConfig

                    from lwdeploy.quantization import export_options, quantize

                    qm = quantize(model, example, "tflite", calib, timings=timer, **export_options(req.options))
                    with timer("litert_convert"):
                        edge = litert_torch.convert(qm.module, (example,),
                                                    quant_config=QuantConfig(pt2e_quantizer=qm.quantizer))
                    quantization = {"scheme": "int8 static (PT2E), per-channel weights", **qm.scheme}
                else:
                    with timer("litert_convert"):
                        edge = litert_torch.convert(model, (example,))
        except LwdeployError:
            raise
        except Exception as e:
            err = explain_failure(e, self.name, model=model, example=example)
            if err is not None:
                raise err from e
            raise
        with timer("serialize"):
            data = edge.model_content()
        details: dict = {"reproducible": "byte-identical for the same command and seed (tested)"}
        if opts["fp16"]:
            from .tflite_fp16 import float16_weights

            with timer("float16_weights"):
                data16 = float16_weights(data)
            details["float16"] = {"float32_bytes": len(data), "float16_bytes": len(data16),
                                  "size_ratio": round(len(data16) / len(data), 3)}
            data = data16
            quantization = {"scheme": "float16 weights (post-training), float32 activations and arithmetic",
                            "weights": "FLOAT16 constants for CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED/"
                            "TRANSPOSE_CONV, each read through a DEQUANTIZE op (the TFLite fp16 form XNNPACK runs)",
                            "tool": "ai-edge-quantizer FLOAT_CASTING", **details["float16"]}
            notes.append(f"float16 weights: {details['float16']['size_ratio']:.2f}× the float32 model's size")
        with timer("repack"):  # both write each distinct quantization vector once (tflite_pack.py)
            if opts["metadata"]:
                data = add_metadata(data, {METADATA_NAME: json.dumps(_metadata(req, opts)).encode()})
                notes.append(f"labels + normalisation stored as JSON in .tflite metadata entry {METADATA_NAME!r}")
            else:
                data = repack(data)
        with atomic_path(req.out_path) as tmp:
            tmp.write_bytes(data)
        return ConversionResult(req.out_path, self.name, quantization, notes, round(time.perf_counter() - t0, 2),
                                details=details, timings=timer.as_dict())

    def verify(self, path: Path, inputs: torch.Tensor, reference: torch.Tensor) -> Verification:
        from ai_edge_litert.interpreter import Interpreter

        timer = StageTimer()
        with timer("inspect"):
            checks = inspect_tflite(path)
        notes: list[str] = []
        if checks.get("add_rescale_out_of_range"):
            bad = checks["add_rescale_out_of_range"][0]
            raise RuntimeError(
                f"int8 {bad['type']} (op {bad['op']}, output {bad['output']!r}) rescales its inputs by "
                f"{bad['ratio']:.3g}× more than LiteRT's kernel can represent: the interpreter would abort the "
                f"process ({len(checks['add_rescale_out_of_range'])} such ops). Its input ranges are far wider than "
                "its output's, typically broken BatchNorm statistics (prune without BN re-estimation) or "
                "calibration images unlike the model's data: calibrate with representative images (--calib DIR)")
        # AUTO op resolver = builtin kernels with the XNNPACK delegate applied by default (float and int8).
        interp = Interpreter(model_path=str(path), num_threads=THREADS)
        try:
            interp.allocate_tensors()
            checks["xnnpack"] = "delegated"
        except RuntimeError as e:
            # XNNPACK refuses some int8 graphs at prepare time (e.g. a requantization scale ratio it cannot
            # represent). The app would then fail the same way unless it disables the delegate: report it,
            # and still check numerics with LiteRT's builtin kernels.
            from ai_edge_litert.interpreter import OpResolverType

            checks["xnnpack"] = f"FAILED to prepare: {str(e).strip()[:300]}"
            notes.append("XNNPACK delegate failed to prepare this model; fidelity/latency measured with LiteRT's "
                         "builtin kernels (no delegate) — see checks.xnnpack")
            interp = Interpreter(model_path=str(path), num_threads=THREADS,
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        nhwc = list(inp["shape"][1:]) == [inputs.shape[2], inputs.shape[3], inputs.shape[1]] and inputs.shape[1] != inputs.shape[3]

        def to_input(x: torch.Tensor) -> np.ndarray:
            a = x.unsqueeze(0).numpy()
            if nhwc:
                a = a.transpose(0, 2, 3, 1)
            return _quantize(a, inp)

        outputs = []
        with timer("fidelity"):
            for x in inputs:
                interp.set_tensor(inp["index"], to_input(x))
                interp.invoke()
                outputs.append(_dequantize(interp.get_tensor(out["index"]), out))
        output = torch.from_numpy(np.concatenate(outputs).reshape(len(outputs), -1))
        int8 = inp["dtype"] == np.int8 or checks["conv_ops_int8"] > 0
        interp.set_tensor(inp["index"], to_input(inputs[0]))
        with timer("latency"):
            latency = time_calls(interp.invoke, WARMUP_INT8 if int8 else WARMUP_FLOAT, TIMED_RUNS)
        runtime = "XNNPACK" if checks["xnnpack"] == "delegated" else "builtin kernels"
        notes.insert(0, f"LiteRT interpreter, {runtime}, {THREADS} threads; latency after {latency['warmup']} warm-up invokes")
        return Verification(True, checks, compare(output, reference), latency, notes, timings=timer.as_dict())


def _quantize(a: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(a / scale) + zero, info.min, info.max).astype(detail["dtype"])
    return a.astype(detail["dtype"])


def _dequantize(a: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (a.astype(np.float32) - zero) * scale
    return a.astype(np.float32)


def _metadata(req: ExportRequest, opts: dict) -> dict:
    info = req.info
    labels = req.labels
    h, w = req.example.shape[-2:]
    return {
        "model": info.name,
        "input": {"layout": "NHWC" if opts["nhwc"] else "NCHW", "height": int(h), "width": int(w), "color": "RGB",
                  "normalisation": "x = (pixel/255 - mean) / std", "mean": list(info.mean), "std": list(info.std)},
        "int8": req.int8,
        "labels": list(labels) if labels is not None else None,
    }
