"""Core ML: coremltools → mlprogram .mlpackage (a directory) with an RGB ImageType input.

Normalisation. The model expects (pixel/255 − mean_c) / std_c per channel. Core ML's ImageType applies ONE
scale for all channels plus a per-channel bias, so a per-channel std cannot be expressed there exactly.
Our choice, exact and free at run time:
  * equal std on all channels (e.g. EfficientNet-Lite's 0.5): ImageType does everything,
    scale = 1/(255·std), bias_c = −mean_c/std.
  * per-channel std (ImageNet): ImageType does scale = 1/255, bias_c = −mean_c, and 1/std_c is folded
    into the input-channel slices of the first convolution's weights. That is exact — including the zero
    padding, because a zero in (pixel/255 − mean) space is a zero in normalised space. When the first op
    is not a plain convolution fed by the input, an explicit per-channel multiply is prepended instead
    (exact, one cheap op). The alternative — one averaged scale — would be 1-2 % off per channel.
int8 (W8A8): PT2E (quantization/pt2e.py, "coreml" row) on the model above, then ct.convert of the Q/DQ
program: weights become constexpr_affine_dequantize (int8 per-channel), activations quantize/dequantize
ops (iOS 17+). All of this runs on Linux; coremltools.optimize.coreml's activation quantization would
need Core ML predictions (macOS) for calibration, so it is not used.
Core ML cannot execute on Linux: verify() is structural and says so.
"""

from __future__ import annotations

import collections
import copy
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwdeploy.atomic import atomic_path
from lwdeploy.errors import LwdeployError

from .base import ConversionResult, Converter, ExportRequest, Verification
from .diagnose import explain_failure
from .provenance import shared_node_provenance
from .timing import StageTimer

INPUT_NAME, OUTPUT_NAME = "image", "logits"
_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
_QUANT_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")


class _ChannelScale(nn.Module):
    """x · s_c — the part of the normalisation ImageType cannot express, when it cannot be folded."""

    def __init__(self, model: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale.view(1, -1, 1, 1))

    def forward(self, x):
        return self.model(x * self.scale)


class _Softmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=-1)


def prepare_normalisation(model: nn.Module, example: torch.Tensor, mean, std,
                          fold: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Return (model taking ImageType's output, ImageType args + a description). Never mutates `model`.

    fold=False never touches the model's weights (an int8 program shared with ExecuTorch is already
    quantized for normalised input): 1/std then stays one per-channel multiply in front of it.
    """
    std_t = torch.tensor(std, dtype=torch.float32)
    if torch.allclose(std_t, std_t[0].expand(3)):
        s = float(std_t[0])
        return model, {"scale": 1 / (255 * s), "bias": [-m / s for m in mean], "in_model_scale": None,
                       "how": f"ImageType scale 1/(255·{s:g}), bias −mean/std (exact: std equal on all channels)"}
    image_args = {"scale": 1 / 255, "bias": [-m for m in mean], "in_model_scale": (1 / std_t).tolist()}
    conv = None
    if fold:
        model = copy.deepcopy(model)
        conv = _first_conv_on_input(model, example)
    if conv is not None:
        with torch.no_grad():
            conv.weight.mul_((1 / std_t).view(1, 3, 1, 1).to(conv.weight.dtype))
        image_args["how"] = ("ImageType scale 1/255, bias −mean; 1/std folded into the first convolution's weights "
                             "(exact, zero padding included)")
    else:
        model = _ChannelScale(model, 1 / std_t)
        image_args["how"] = "ImageType scale 1/255, bias −mean; then one per-channel multiply by 1/std (exact)"
    return model, image_args


def _first_conv_on_input(model: nn.Module, example: torch.Tensor) -> nn.Conv2d | None:
    """The Conv2d that consumes the model's input tensor itself (so folding 1/std into it is exact)."""
    from lwdeploy.models.input_readers import convs_reading_input

    readers = convs_reading_input(model, example)
    conv = model.get_submodule(readers[0]) if readers else None
    if conv is not None and conv.groups == 1 and conv.padding_mode == "zeros" and conv.in_channels == 3:
        return conv
    return None


def _strip_alias(exported):
    """coremltools 9.0 rejects aten.alias nodes from torch.export (coremltools issue 2517): they are no-ops."""
    gm = exported.graph_module
    output_names = {a.name for a in gm.graph.find_nodes(op="output")[0].all_input_nodes}
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and "alias" in str(node.target) and node.name not in output_names:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    if removed:
        gm.recompile()
    return exported


class CoreMLConverter(Converter):
    name = "coreml"
    suffix = ".mlpackage"

    def convert(self, req: ExportRequest) -> ConversionResult:
        import coremltools as ct

        t0 = time.perf_counter()
        timer = StageTimer()
        opts = {"fp16": False, "classifier": False, "min_target": "iOS17", "quantizer": "coreml", **req.options}
        if opts["min_target"] not in _TARGETS:
            raise LwdeployError(f"unknown Core ML deployment target {opts['min_target']!r}", f"one of {', '.join(_TARGETS)}")
        if req.int8 and opts["min_target"] in ("iOS16", "macOS13"):
            raise LwdeployError(f"int8 activations need Core ML 7 (iOS17/macOS14); got {opts['min_target']}",
                                "use --min-target iOS17 or export without --int8")
        shared = req.quantized if req.int8 else None
        base_model = shared.module if shared is not None else req.model.eval()
        model, image = prepare_normalisation(base_model, req.example, req.info.mean, req.info.std,
                                             fold=shared is None)
        to_model_input = _to_model_input(image, req.info)
        example = to_model_input(req.example)
        notes = [f"normalisation: {image['how']}"]
        labels = list(req.labels) if req.labels else None
        if opts["classifier"]:
            model = _Softmax(model)
            if labels is None:
                with torch.no_grad():
                    labels = [str(i) for i in range(int(model(example).shape[-1]))]
                notes.append("classifier without labels: class indices used as labels")
        quantization: dict[str, Any] = {"scheme": "none (float32)" if not opts["fp16"] else "none (float16 compute)"}
        exported = None
        try:
            with shared_node_provenance():  # cheaper torch.export/decompositions (provenance.py)
                if shared is not None:
                    quantization = {"scheme": "int8 static W8A8 (PT2E), per-channel weights", **shared.scheme,
                                    "shared": "the calibrated PT2E program is shared with the ExecuTorch export (same "
                                    "XNNPACK annotation rules and lowering): calibrated once"}
                elif req.int8:
                    from lwdeploy.quantization import export_options, quantize

                    qm = quantize(model, example, "coreml", [to_model_input(c) for c in req.calib], quantizer=opts["quantizer"],
                                  timings=timer, **export_options(req.options))
                    model = qm.module
                    quantization = {"scheme": "int8 static W8A8 (PT2E), per-channel weights", **qm.scheme}
                with timer("torch_export"):
                    exported = torch.export.export(model, (example,))
                    exported = _strip_alias(exported.run_decompositions({}))
                kwargs: dict[str, Any] = {}
                if opts["classifier"]:
                    kwargs["classifier_config"] = ct.ClassifierConfig(labels)
                else:
                    kwargs["outputs"] = [ct.TensorType(name=OUTPUT_NAME)]
                with timer("ct_convert"):
                    mlmodel = ct.convert(
                        exported,
                        inputs=[ct.ImageType(name=INPUT_NAME, shape=tuple(req.example.shape), scale=image["scale"],
                                             bias=image["bias"], color_layout=ct.colorlayout.RGB)],
                        convert_to="mlprogram",
                        minimum_deployment_target=getattr(ct.target, opts["min_target"]),
                        compute_precision=ct.precision.FLOAT16 if opts["fp16"] else ct.precision.FLOAT32,
                        skip_model_load=True,          # nothing can load it on Linux; on macOS the app compiles it
                        **kwargs,
                    )
        except LwdeployError:
            raise
        except Exception as e:
            err = explain_failure(e, self.name, graph=exported, model=model, example=example)
            if err is not None:
                raise err from e
            raise
        mlmodel.short_description = f"{req.info.name} ({req.info.family}) exported by lwdeploy"
        mlmodel.user_defined_metadata.update({
            "lwdeploy.mean": ",".join(f"{m:g}" for m in req.info.mean),
            "lwdeploy.std": ",".join(f"{s:g}" for s in req.info.std),
            "lwdeploy.normalisation": image["how"],
            "lwdeploy.labels": "\n".join(labels) if labels else "",
        })
        # Reproducibility: drop the conversion date coremltools stamps into the metadata, and replace the random
        # item UUIDs of the package's Manifest.json by ones derived from the items' contents (below).
        mlmodel.user_defined_metadata.pop("com.github.apple.coremltools.conversion_date", None)
        try:
            with timer("save"), atomic_path(req.out_path) as tmp:
                mlmodel.save(str(tmp))
                deterministic_manifest(tmp)
        finally:
            _remove_temp_package(mlmodel)
        notes.append(f"compute precision {'float16' if opts['fp16'] else 'float32'}; minimum target {opts['min_target']}")
        if req.int8:
            notes.append("int8: PT2E Q/DQ graph converted by coremltools — constexpr_affine_dequantize int8 weights, "
                         "quantize/dequantize activations")
        return ConversionResult(req.out_path, self.name, quantization, notes, round(time.perf_counter() - t0, 2),
                                details={"image_input": {k: image[k] for k in ("scale", "bias", "in_model_scale")},
                                         "reproducible": "byte-identical for the same command and seed (tested): the "
                                         "conversion date is dropped and Manifest.json's item ids are uuid5 of each "
                                         "item's path + content instead of coremltools' random uuid4"},
                                timings=timer.as_dict())

    def verify(self, path: Path, inputs: torch.Tensor, reference: torch.Tensor) -> Verification:
        timer = StageTimer()
        with timer("inspect"):
            checks = inspect_mlpackage(path)
        expected_classes = int(reference.shape[-1])
        out_shapes = [o.get("shape") for o in checks["outputs"] if o.get("shape")]
        checks["output_matches_reference_classes"] = any(s and s[-1] == expected_classes for s in out_shapes) or \
            checks.get("classifier", False)
        notes = ["Core ML cannot run on Linux: structural checks only; numerical fidelity and latency need macOS "
                 "(coremltools MLModel.predict) or a device"]
        return Verification(False, checks, None, None, notes, timings=timer.as_dict())


def _remove_temp_package(mlmodel) -> None:
    """ct.convert writes the model to a temporary .mlpackage that coremltools deletes only at interpreter exit
    (atexit). The pipeline converts in worker processes, which end without running atexit handlers, so every
    Core ML export there left a copy of its weights in the temp folder (100 of them after a few matrix runs)."""
    if getattr(mlmodel, "is_temp_package", False) and getattr(mlmodel, "package_path", None):
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


def deterministic_manifest(package: Path | str) -> dict[str, str]:
    """Rename the .mlpackage's item identifiers to UUIDs derived from each item's path and content.

    coremltools' ModelPackage writer keys Manifest.json's items by fresh random UUIDs (uuid4) on every save —
    the only bytes that differ between two identical exports. The identifiers are opaque keys: Core ML looks
    the root model up by `rootModelIdentifier` in `itemInfoEntries` and reads each item by its `path`; nothing
    else refers to them. A name-based UUID (uuid5 of the item's path and the sha256 of its files) is just as
    valid and unique within the package, and stable, so the same export gives the same bytes.
    Returns {old id: new id}.
    """
    import hashlib
    import json
    import uuid

    package = Path(package)
    manifest_file = package / "Manifest.json"
    manifest = json.loads(manifest_file.read_text())
    root = manifest["itemInfoEntries"].get(manifest["rootModelIdentifier"])
    if root is not None:
        _deterministic_spec(package / "Data" / root["path"])
    renamed: dict[str, str] = {}
    entries = {}
    for old_id, item in manifest["itemInfoEntries"].items():
        item_path = package / "Data" / item["path"]
        files = [item_path] if item_path.is_file() else sorted(p for p in item_path.rglob("*") if p.is_file())
        digest = hashlib.sha256(item["path"].encode())
        for f in files:
            digest.update(str(f.relative_to(package)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "lwdeploy-mlpackage-item:" + digest.hexdigest()))
        renamed[old_id] = new_id
        entries[new_id] = item
    manifest["itemInfoEntries"] = dict(sorted(entries.items()))
    manifest["rootModelIdentifier"] = renamed.get(manifest["rootModelIdentifier"], manifest["rootModelIdentifier"])
    manifest_file.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    return renamed


def _deterministic_spec(spec_file: Path) -> None:
    """Rewrite model.mlmodel with protobuf's deterministic serialization (map entries sorted by key).

    coremltools serializes the spec's maps (attributes, function/block maps, metadata) in hash order, which
    changes with Python's per-process string hash seed: two runs of the same export wrote the same spec
    (identical text) in different byte orders. Measured: int8 .mlpackage from two CLI runs differed only here.
    """
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))


def _to_model_input(image: dict[str, Any], info) -> Any:
    """Map a normalised tensor ((x/255−mean)/std) to what the converted model's first layer receives."""
    scale = image["in_model_scale"]
    if scale is None:
        return lambda t: t
    std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1)
    return lambda t: t * std      # = pixel/255 − mean, the ImageType output


def inspect_mlpackage(path: Path | str) -> dict[str, Any]:
    """Structural facts from the saved .mlpackage (reads the protobuf spec; no Core ML runtime needed)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    ops: collections.Counter[str] = collections.Counter()
    opsets = []
    if spec.WhichOneof("Type") == "mlProgram":
        for fn in spec.mlProgram.functions.values():
            for opset, block in fn.block_specializations.items():
                opsets.append(opset)
                _count_ops(block, ops)

    def feature(f) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        d: dict[str, Any] = {"name": f.name, "type": kind}
        if kind == "imageType":
            d.update(width=f.type.imageType.width, height=f.type.imageType.height,
                     color=ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(f.type.imageType.colorSpace))
        elif kind == "multiArrayType":
            d.update(shape=list(f.type.multiArrayType.shape),
                     dtype=ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(f.type.multiArrayType.dataType))
        return d

    quant_weights = sum(ops.get(k, 0) for k in _QUANT_WEIGHT_OPS)
    return {
        "spec_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "opsets": opsets,
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "classifier": bool(spec.description.predictedFeatureName),
        "op_histogram": dict(ops.most_common()),
        "op_count": sum(v for k, v in ops.items() if k != "const"),
        "conv_ops": ops.get("conv", 0),
        "quantized_weight_ops": quant_weights,
        "activation_quantize_ops": ops.get("quantize", 0),
        "int8": quant_weights > 0 and ops.get("quantize", 0) > 0,
        "metadata": dict(spec.description.metadata.userDefined),
    }


def _count_ops(block, ops: collections.Counter) -> None:
    for op in block.operations:
        ops[op.type] += 1
        for inner in op.blocks:
            _count_ops(inner, ops)
