"""lwdeploy.converters — one module per target behind one small interface (see base.py).

TARGETS is the one table of targets: the CLI's `--target` choices, its option flags and the docs are
generated from it. Adding a target = one module with a Converter subclass + one row here.
Importing this package is cheap (no torch, no converter stacks); `get_converter` imports the module.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetOption:
    """One `ExportRequest.options` key a target understands (the CLI exposes it as --<key with dashes>)."""

    key: str
    type: type
    default: object
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    suffix: str
    module: str                     # "lwdeploy.converters.<file>:<Converter class>"
    runs_on_host: bool              # verify() executes the artifact here (False: structural checks only)
    int8: bool
    fp16: bool
    description: str
    options: tuple[TargetOption, ...] = field(default_factory=tuple)



NHWC_HELP = ("NHWC input, no layout TRANSPOSE at the input (tflite: shape (1,H,W,3); executorch: shape (1,3,H,W) in "
             "channels-last dim order, the bytes in H,W,C order)")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "tflite", "LiteRT (TensorFlow Lite)", ".tflite", "lwdeploy.converters.tflite:TFLiteConverter",
            runs_on_host=True, int8=True, fp16=True,
            description="litert-torch → .tflite flatbuffer; int8 via litert's PT2EQuantizer; float16 weights via "
            "ai-edge-quantizer; verified with the LiteRT interpreter (XNNPACK)",
            options=(
                TargetOption("fp16", bool, False, "float16 weights (tflite: FLOAT16 constants + DEQUANTIZE, float32 "
                             "arithmetic; coreml: float16 compute precision)"),
                TargetOption("nhwc", bool, False, NHWC_HELP),
                TargetOption("metadata", bool, True, "store labels + normalisation in the .tflite metadata"),
            ),
        ),
        Target(
            "executorch", "ExecuTorch (XNNPACK)", ".pte", "lwdeploy.converters.executorch:ExecuTorchConverter",
            runs_on_host=True, int8=True, fp16=False,
            description="torch.export → to_edge_transform_and_lower(XnnpackPartitioner) → .pte; int8 via "
            "XNNPACKQuantizer; verified with the ExecuTorch runtime",
            options=(
                TargetOption("nhwc", bool, False, NHWC_HELP),
                TargetOption("float_for_speed", bool, True, "with --int8: keep the layers XNNPACK runs slower in "
                             "int8 than in float (5×5 depthwise convs, the 3-channel stem) in float; "
                             "--no-float-for-speed quantizes them too: a smaller file, a slower program"),
                TargetOption("etrecord", bool, True, "write an ETRecord beside the .pte (maps profiler events to PyTorch modules)"),
                TargetOption("delegate", str, "xnnpack", "backend the .pte delegates to: xnnpack (CPU, verified here) or "
                             "coreml (Apple ANE/GPU/CPU; structural checks only off macOS)", choices=("xnnpack", "coreml")),
            ),
        ),
        Target(
            "coreml", "Core ML (mlprogram)", ".mlpackage", "lwdeploy.converters.coreml:CoreMLConverter",
            runs_on_host=False, int8=True, fp16=True,
            description="coremltools → .mlpackage with an RGB ImageType input that applies the "
            "normalisation; W8A8 via PT2E; structural checks only off macOS",
            options=(
                TargetOption("fp16", bool, False, "float16 weights (tflite: FLOAT16 constants + DEQUANTIZE, float32 "
                             "arithmetic; coreml: float16 compute precision)"),
                TargetOption("classifier", bool, False, "classifier outputs (classLabel + probabilities) with labels"),
                TargetOption("min_target", str, "iOS17", "minimum deployment target",
                             choices=("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")),
                TargetOption("quantizer", str, "coreml", "int8 annotation rules: fast default or coremltools' "
                             "own CoreMLQuantizer (slow: minutes)", choices=("coreml", "coreml-native")),
            ),
        ),
    )
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        close = difflib.get_close_matches(name.lower(), TARGETS, n=2, cutoff=0.4)
        from lwdeploy.errors import LwdeployError

        hint = f"did you mean {' or '.join(close)}?" if close else f"choose from {', '.join(TARGETS)}"
        raise LwdeployError(f"unknown target {name!r}", hint)
    return TARGETS[name]


def get_converter(name: str):
    """The Converter instance for target `name` (imports its stack only now)."""
    target = get_target(name)
    module_name, cls_name = target.module.split(":")
    return getattr(importlib.import_module(module_name), cls_name)()


__all__ = ["TARGETS", "Target", "TargetOption", "get_converter", "get_target"]
