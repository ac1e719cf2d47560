"""PT2E int8 quantization, one quantizer per target — per-channel weights, calibrated static activations.

Flow (the same for every target): torch.export → prepare_pt2e(quantizer) → run every calibration tensor →
convert_pt2e → a GraphModule with quantize/dequantize pairs that the target's converter lowers to int8 kernels.
prepare_pt2e/convert_pt2e come from torchao (torch 2.13 moved PT2E there; litert-torch, ExecuTorch and our
Core ML shim all use torchao's Quantizer base class).

Each target's quantizer is built by ONE function in QUANTIZER_BUILDERS so later work (target-aware lowering,
fixed output ranges for sigmoid/hardswish…) has a single place to extend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from lwdeploy.errors import LwdeployError
from lwdeploy.quantization.calibration import stack_batches


@dataclass
class QuantizedModel:
    """The converted PT2E program plus what produced it (the TFLite converter needs the quantizer back)."""

    module: torch.fx.GraphModule                # after convert_pt2e: float I/O, Q/DQ pairs inside
    quantizer: Any                              # torchao Quantizer instance that annotated the graph
    scheme: dict[str, Any] = field(default_factory=dict)   # JSON-able description for the manifest


# --------------------------------------------------------------------------------------------------------
# One builder per target. Each returns (quantizer, scheme, fold_quantize).
# fold_quantize: whether convert_pt2e folds weight quantize ops into int8 constants. litert-torch's own
# tests convert with fold_quantize=False (its lowering pattern-matches q/dq on float weights); ExecuTorch's
# XNNPACK flow and coremltools expect folded int8 weights.
# --------------------------------------------------------------------------------------------------------


def _tflite_quantizer() -> tuple[Any, dict[str, Any], bool]:
    from litert_torch.quantize import pt2e_quantizer as pq

    from lwdeploy.quantization.tflite_int8 import TFLiteInt8Quantizer

    # litert-torch's PT2EQuantizer + split→slice and padded avg-pool→depthwise rewrites and qparam sharing on
    # data-movement ops: TFLite's int8 SLICE/PAD/RESHAPE/… reject differing input/output scales (tflite_int8.py)
    quantizer = TFLiteInt8Quantizer().set_global(
        pq.get_symmetric_quantization_config(is_per_channel=True, is_qat=False, is_dynamic=False)
    )
    scheme = {
        "quantizer": "litert_torch.quantize.pt2e_quantizer.PT2EQuantizer (lwdeploy TFLiteInt8Quantizer)",
        "same_scale_ops": "slice/split/pad/reshape/transpose/gather share their input's qparams; padded "
        "avg_pool2d → depthwise conv (1/k² weights)",
        "weights": "int8 symmetric per-channel (axis 0), [-127, 127], MinMax observer",
        "activations": "int8 per-tensor affine, static, Histogram observer",
        "fixed_qparams": "logistic/softmax outputs scale 1/256, zero_point -128 (TFLite kernel requirement)",
    }
    return quantizer, scheme, False


def _executorch_quantizer() -> tuple[Any, dict[str, Any], bool]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    from lwdeploy.quantization.xnnpack import GraphAwareXNNPACKQuantizer

    # XNNPACKQuantizer without the annotators whose operators the graph lacks (xnnpack.py)
    quantizer = GraphAwareXNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=False, is_dynamic=False)
    )
    scheme = {
        "quantizer": "executorch.backends.xnnpack.quantizer.xnnpack_quantizer.XNNPACKQuantizer",
        "weights": "int8 symmetric per-channel (axis 0), [-127, 127], PerChannelMinMax observer",
        "activations": "int8 per-tensor affine, static, Histogram observer",
    }
    return quantizer, scheme, True


def _coreml_quantizer() -> tuple[Any, dict[str, Any], bool]:
    """W8A8 for Core ML, annotated by torchao-native rules (XNNPACKQuantizer's) — the fast default.

    coremltools' own CoreMLQuantizer (see `_coreml_native_quantizer`) finds its patterns by torch.export-ing
    405 pattern graphs with strict dynamo tracing on every call: we measured 290 s on this 2-core machine
    for MobileNetV3-Small, against 5 s here. The scheme is the same W8A8 Core ML runs (int8 symmetric
    per-channel weights, per-tensor int8 activations with zero point; iOS 17 quantize/dequantize ops), and
    coremltools converts the resulting quantized_decomposed Q/DQ ops itself.
    """
    quantizer, _, fold = _executorch_quantizer()
    scheme = {
        "quantizer": "XNNPACKQuantizer annotation rules, converted by coremltools' PT2E frontend (W8A8)",
        "weights": "int8 symmetric per-channel (axis 0), [-127, 127], PerChannelMinMax observer",
        "activations": "int8 per-tensor affine, static, Histogram observer",
        "why_not_CoreMLQuantizer": "its pattern matching re-exports 405 pattern graphs per call (290 s measured); "
        "use quantizer='coreml-native' for it",
    }
    return quantizer, scheme, fold


def _coreml_native_quantizer() -> tuple[Any, dict[str, Any], bool]:
    """coremltools' CoreMLQuantizer (W8A8), made to run on torch 2.13 + torchao. Correct but slow (above)."""
    _install_coreml_quantizer_shim()
    from coremltools.optimize.torch.quantization._coreml_quantizer import CoreMLQuantizer
    from coremltools.optimize.torch.quantization.quantization_config import LinearQuantizerConfig

    # W8A8 as in the coremltools PT2E docs: int8 symmetric per-channel weights, uint8 activations.
    # min_max observers: this is post-training calibration, not QAT, so no moving averages.
    config = LinearQuantizerConfig.from_dict(
        {
            "global_config": {
                "quantization_scheme": "symmetric",
                "weight_dtype": torch.qint8,
                "weight_per_channel": True,
                "activation_dtype": torch.quint8,
                "weight_observer": "min_max",
                "activation_observer": "min_max",
            }
        }
    )
    quantizer = _TorchaoObserverAdapter(CoreMLQuantizer(config))
    scheme = {
        "quantizer": "coremltools.optimize.torch.quantization.CoreMLQuantizer (W8A8)",
        "weights": "int8 symmetric per-channel, MinMax observer",
        "activations": "uint8 symmetric per-tensor, static, MinMax observer",
        "note": "CoreMLQuantizer is written against torch.ao PT2E (removed in torch 2.13); lwdeploy maps its "
        "imports to torchao and its observers to torchao's equivalents (see quantization/pt2e.py)",
    }
    return quantizer, scheme, True


QUANTIZER_BUILDERS: dict[str, Callable[[], tuple[Any, dict[str, Any], bool]]] = {
    "tflite": _tflite_quantizer,
    "executorch": _executorch_quantizer,
    "coreml": _coreml_quantizer,
    "coreml-native": _coreml_native_quantizer,
}


# "early" is the default: AdaRound on the first EARLY_LAYERS layers only (adaround.first_layers says why)
WEIGHT_ROUNDINGS = ("early", "nearest", "adaround")
EARLY_LAYERS = 3


def export_options(options: dict) -> dict[str, Any]:
    """quantize() keyword arguments from an export's options (ExportRequest/ExportPlan .options): the one place
    that maps `--keep-float`, `--keep-float-budget`, `--weight-rounding` (`--adaround`) and `--distill` onto
    quantization."""
    return {"keep_float": options.get("keep_float"), "keep_float_budget": options.get("keep_float_budget"),
            "weight_rounding": options.get("weight_rounding", "early"),
            "distill_steps": options.get("distill_steps", 0),
            "float_for_speed": options.get("float_for_speed") is not False}  # unset (None) means on


def quantize(
    model: nn.Module,
    example: torch.Tensor,
    target: str,
    calib: Iterable[torch.Tensor],
    *,
    quantizer: str | None = None,
    keep_float: Iterable[str] | None = None,
    timings: Any = None,
    bias_correction: bool = True,
    keep_float_budget: float | None = None,
    weight_rounding: str = "early",
    distill_steps: int = 0,
    float_for_speed: bool = True,
) -> QuantizedModel:
    """Per-channel, calibrated, static int8 PT2E quantization of `model` with `target`'s own quantizer.

    `quantizer` picks another row of QUANTIZER_BUILDERS (e.g. "coreml-native"); default: the target's.
    `keep_float`: module paths left in float (ExportRequest.options["keep_float"]; see quantization/keep_float.py).
    `bias_correction`: correct each layer's bias for the mean shift of its int8 weights (bias_correction.py).
    `weight_rounding`: "early" (default): learned up/down rounding (AdaRound, adaround.py) on the same int8 grid
    for the first EARLY_LAYERS conv/linear layers the image meets, written into the float weights before export,
    and the quantizers' nearest rounding elsewhere; "adaround": learned rounding for every layer; "nearest":
    the quantizers' own everywhere.
    `distill_steps`: after calibration, fine-tune the fake-int8 program's weights for this many steps (8 images
    each) so its outputs match the float model's on the calibration images (distill.py); 0: off.
    `keep_float_budget`: also keep the worst layers (per-layer SQNR drop, measured on a first int8 pass over
    8 calibration images) in float, as long as their share of the model's MACs stays within this fraction
    (keep_float.choose_within_budget); costs a second quantization pass.
    `float_for_speed`: ExecuTorch keeps the layers XNNPACK runs slower in int8 than in float (5×5 and
    channel-multiplier depthwise convs, a ≤ 3×3 RGB stem) in float; False quantizes them too: a smaller file
    (their weights int8), a slower program.
    `timings`: a converters.timing.StageTimer; each step's wall/CPU seconds are added to it (quantize.*).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    builder = quantizer or target
    if builder not in QUANTIZER_BUILDERS:
        raise LwdeployError(f"no int8 quantizer {builder!r}", f"one of: {', '.join(QUANTIZER_BUILDERS)}")
    calib = list(calib)
    if not calib:
        # Static activation ranges come only from calibration; an uncalibrated observer gives garbage scales.
        raise LwdeployError("int8 quantization needs calibration inputs", "pass --calib DIR or use the default set")
    if keep_float_budget:
        if not 0 < keep_float_budget < 1:
            raise LwdeployError(f"keep-float budget {keep_float_budget} must be a fraction in (0, 1)",
                                "e.g. 0.05 keeps float layers worth at most 5 % of the MACs")
        return _quantize_within_budget(model, example, target, calib, quantizer=quantizer,
                                       keep_float=keep_float, timings=timings, bias_correction=bias_correction,
                                       weight_rounding=weight_rounding, distill_steps=distill_steps,
                                       float_for_speed=float_for_speed, budget=keep_float_budget)
    quantizer_obj, scheme, fold = QUANTIZER_BUILDERS[builder]()

    t0 = time.perf_counter()
    model = model.eval()
    step = timings if timings is not None else _no_timer
    requested = list(keep_float or [])                 # the caller's; the target's own rules add to the copy
    keep_float = list(requested)
    slow_depthwise: list[str] = []
    float_stem: list[str] = []
    float_layernorms: list[str] = []
    if builder == "executorch":
        from lwdeploy.quantization.keep_float import layer_norms, rgb_stem, slow_int8_depthwise

        if float_for_speed:
            slow_depthwise = [p for p in slow_int8_depthwise(model) if p not in keep_float]
            keep_float += slow_depthwise
            float_stem = [p for p in rgb_stem(model, example) if p not in keep_float]
            keep_float += float_stem
        float_layernorms = [p for p in layer_norms(model) if p not in keep_float]
        keep_float += float_layernorms
    corrected = 0
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise LwdeployError(f"unknown weight rounding {weight_rounding!r}", f"one of: {', '.join(WEIGHT_ROUNDINGS)}")
    if distill_steps < 0:
        raise LwdeployError(f"distillation steps {distill_steps} is negative", "pass 0 (off) or a positive count")
    original, rounded = model, None
    if weight_rounding != "nearest":
        from lwdeploy.quantization.adaround import adaround, first_layers

        # on a copy: weights moved onto the int8 grid with learned rounding; PT2E re-quantizes them losslessly
        only = first_layers(model, example, EARLY_LAYERS) if weight_rounding == "early" else None
        with step("quantize.adaround"):
            model, rounded = adaround(model, calib, skip=keep_float or (), only=only)
    if bias_correction:
        from lwdeploy.quantization.bias_correction import correct_biases

        # on a copy: int8 weight rounding shifts each layer's output mean; the bias takes it back
        with step("quantize.bias_correction"):
            model, corrected = correct_biases(model, calib, skip=keep_float or (),
                                              reference=original if rounded is not None else None)
    from lwdeploy.quantization import capture

    # non-strict export + the source tags litert-torch's add/mul/cat/pool annotators match on (capture.py)
    with step("quantize.torch_export"):
        graph = capture.capture(model, example)
    from lwdeploy.quantization.batchnorm_fold import (batchnorm_through_cat, batchnorm_through_channel_permutation,
                                                      batchnorms_to_depthwise)

    # every target: a BatchNorm after a cat of convs (MixNet's mixed-kernel conv, NAS cells' FactorizedReduce)
    # is no conv→BN pair for prepare_pt2e to fold, so it stayed a float op between dequantize/quantize (TFLite:
    # float SUB/MUL islands; MixNet-S has 13, NASNet-A 4), and convert_pt2e then ran torchao's QAT conv-BN fold,
    # which re-exports ~100 pattern graphs (25–35 CPU s on MixNet/NASNet). Folded into the convs, none remains.
    folded = batchnorm_through_cat(graph)
    # a BN after a channel shuffle of a conv (CondenseNet's norm2, 36 of them) moves before the shuffle, with its
    # channels permuted back, and folds into that conv: one int8 op per dense layer less on every target
    unshuffled = batchnorm_through_channel_permutation(graph)
    # a BN reading a conv that other ops read too: prepare_pt2e would fold it into that conv for every reader;
    # and every BN after a non-conv (a dense block's pre-activation BN after a cat): neither litert-torch's nor
    # XNNPACK's quantizer annotates it, so it stayed float (TFLite: MUL/ADD islands; ExecuTorch: an F32 DWConv
    # between two Converts, CondenseNet 72 of them). CoreMLQuantizer annotates BN itself.
    kept_apart = batchnorms_to_depthwise(graph, standalone=builder != "coreml-native")
    from lwdeploy.quantization.fixed_ranges import FixedReLU6Ranges
    from lwdeploy.quantization.keep_float import wrap

    # conv/add → ReLU6 quantized on [0, 6] after the clamp, not over the conv's own range (fixed_ranges.py)
    fixed_ranges = FixedReLU6Ranges(quantizer_obj)
    annotating = wrap(fixed_ranges, keep_float, model)
    with step("quantize.prepare_pt2e"):
        prepared = prepare_pt2e(graph, annotating)
    n_images = 0
    with torch.no_grad(), single_thread(), step("quantize.calibrate"):
        for batch in calib:
            if batch.dim() == 3:
                batch = batch.unsqueeze(0)
            # The exported graph is specialised to the example's batch size: feed one image at a time.
            for image in batch.split(example.shape[0]):
                prepared(image)
                n_images += image.shape[0]
    distilled = None
    if distill_steps:
        from lwdeploy.quantization.distill import distill

        # the calibrated fake-int8 program learns to match the float model (`original`: before rounding/bias
        # correction) on the calibration images; activation ranges stay the calibrated ones
        with step("quantize.distill"):
            distilled = distill(prepared, original, stack_batches(calib), steps=distill_steps)
    with step("quantize.convert_pt2e"):
        converted = convert_pt2e(prepared, fold_quantize=fold)
    # The GraphModule comes back flagged as training; converters (litert-torch) warn and may keep
    # train-mode ops. This swaps in the eval forms and clears the flag.
    converted = move_exported_model_to_eval(converted)
    for module in converted.modules():  # .eval() is disallowed on exported graphs; the flag is what's read
        module.training = False
    unsplatted = unsplat_biases(converted) if builder == "tflite" else 0
    scheme = {
        **scheme,
        "target": target,
        "builder": builder,
        "per_channel": True,
        "static": True,
        "calibration_images": n_images,
        "keep_float": requested,
        "relu6_fixed_range": "conv/linear/add → ReLU6 outputs quantized on [0, 6] (scale 6/255, zero point -128)",
        "hardsigmoid_fixed_range": "relu6(·)·c outputs on [0, 6c] (hard-sigmoid: [0, 1], scale 1/255, zero point "
                                   f"-128): {fixed_ranges.fixed_hardsigmoids} MULs",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    scheme["bias_correction"] = (f"{corrected} layers: bias -= E[(Q(W) - W)·x] on the calibration images"
                                 if bias_correction else "off")
    scheme["weight_rounding"] = ("nearest" if rounded is None else
                                 f"{weight_rounding}: {sum(r['kept'] == 'adaround' for r in rounded.values())} of "
                                 f"{len(rounded)} layers learned by AdaRound"
                                 + (f" ({', '.join(rounded)})" if weight_rounding == "early" else "")
                                 + ", the others nearest")
    scheme["distillation"] = distilled or "off"
    if unsplatted:
        scheme["uniform_biases_nudged"] = unsplatted
    if folded:
        scheme["batchnorms_folded_through_cat"] = folded
    if unshuffled:
        scheme["batchnorms_folded_through_shuffle"] = unshuffled
    if kept_apart:
        scheme["batchnorms_as_depthwise"] = kept_apart
    if float_stem:
        scheme["float_stem"] = {"layers": float_stem, "why": "XNNPACK runs the 3-channel stem conv faster in float; "
                                "the program quantizes its output instead of the image (keep_float.rgb_stem)"}
    if float_layernorms:
        scheme["float_layernorm"] = {"layers": float_layernorms, "why": "LayerNorms written as XNNPACK ops "
                                     "(lowering.LinearMeanLayerNorm) stay float, as a native layer_norm would "
                                     "(keep_float.layer_norms)"}
    if slow_depthwise:
        scheme["float_depthwise"] = {"layers": slow_depthwise, "why": "XNNPACK's int8 depthwise kernel with 10-25 "
                                     "taps, and its grouped IGEMM for channel-multiplier depthwise convs, are "
                                     "slower than their float ones (keep_float.slow_int8_depthwise)"}
    return QuantizedModel(module=converted, quantizer=quantizer_obj, scheme=scheme)


@contextlib.contextmanager
def _no_timer(name: str):
    yield


def _quantize_within_budget(model, example, target, calib, *, budget: float, keep_float, **kw) -> QuantizedModel:
    from lwdeploy.quantization.fidelity import layer_sqnr
    from lwdeploy.quantization.keep_float import choose_within_budget, layer_macs

    t0 = time.perf_counter()
    first = quantize(model, example, target, calib, keep_float=keep_float, **kw)
    images = stack_batches(calib[:8])
    rows = layer_sqnr(model, first.module, images)
    chosen, share = choose_within_budget(rows, layer_macs(model, example), budget)
    if not chosen:
        result = first
    else:
        result = quantize(model, example, target, calib, keep_float=list(keep_float or []) + chosen, **kw)
    result.scheme["keep_float_budget"] = {"budget_mac_share": budget, "chosen": chosen,
                                          "mac_share": round(share, 4),
                                          "seconds_with_first_pass": round(time.perf_counter() - t0, 2)}
    return result


def unsplat_biases(gm: torch.fx.GraphModule) -> int:
    """Make every uniform non-zero conv/linear bias non-uniform by one float ulp on every other channel.

    litert-torch stores a tensor whose elements are all equal as an MLIR splat constant, and its int8
    conversion then quantizes such a bias with ONE scale (the first channel's) although the weights are
    per-channel: on every other channel the int32 bias is wrong by the ratio of the channel scales. A
    random-init squeeze-excite whose hard-sigmoid +3 was folded into the excite conv's bias (lowering.py) has
    exactly such a bias (all 3.0): MobileNetV3-Small TFLite int8 output SQNR was -0.3 dB against 13 dB for
    the same PT2E program simulated (per-op comparison: the first wrong tensor is the SE excite conv; its
    int32 bias held 40022 on every channel). One ulp (~1e-7 relative) is far below the int32 bias step.
    Returns how many biases were changed."""
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in ("conv", "linear")):
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not isinstance(bias, torch.fx.Node) or bias.op != "get_attr":
            continue
        value = graph_attr(gm, bias.target)
        if not isinstance(value, torch.Tensor) or value.numel() < 2 or not value.is_floating_point():
            continue
        flat = value.detach().reshape(-1)
        if bool((flat == flat[0]).all()) and float(flat[0]) != 0.0:
            new = flat.clone()
            new[1::2] = torch.nextafter(new[1::2], torch.full_like(new[1::2], math.inf))
            replace_graph_attr(gm, bias.target, new.reshape(value.shape))
            changed += 1
    return changed


def graph_attr(gm: nn.Module, target: str):
    """What a get_attr node with this (dotted) target reads."""
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def replace_graph_attr(gm: nn.Module, target: str, value) -> None:
    """Give a get_attr target a new value — a new tensor, never an in-place write (the graph's constants may
    share storage with the caller's model); a Parameter stays a (frozen) Parameter."""
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if isinstance(getattr(owner, name), nn.Parameter) and isinstance(value, torch.Tensor):
        value = nn.Parameter(value, requires_grad=False)
    setattr(owner, name, value)


class single_thread:
    """One intra-op thread inside the block (calibration here, AdaRound's small ops). The observed forward is dominated by per-op Python observer work;
    with 2 OpenMP threads on a busy 2-core machine each of GhostNet's ~400 small ops waited on the other
    thread and one calibration image took 15 s instead of 0.35 s (measured)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


# --------------------------------------------------------------------------------------------------------
# coremltools 9.0's CoreMLQuantizer imports torch.ao.quantization.quantizer / .pt2e, which torch 2.13 removed
# (PT2E now lives in torchao). The code itself is fine; only the module paths moved. We alias those paths
# to torchao's modules (only when absent, so a torch that still has them is untouched) and, after
# annotation, swap its torch.ao observers for the torchao classes of the same name, because torchao's
# convert_pt2e recognises only its own observer types.
# --------------------------------------------------------------------------------------------------------


def _install_coreml_quantizer_shim() -> None:
    try:
        import torch.ao.quantization.quantizer.quantizer  # noqa: F401  (an older torch: nothing to do)

        return
    except ImportError:
        pass
    import executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils as xnnpack_utils
    import torchao.quantization.pt2e.quantizer as ao_quantizer_pkg
    import torchao.quantization.pt2e.quantizer.quantizer as ao_quantizer
    import torchao.quantization.pt2e.utils as ao_utils
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    xnnpack_quantizer = types.ModuleType("torch.ao.quantization.quantizer.xnnpack_quantizer")
    xnnpack_quantizer._get_module_name_filter = get_module_name_filter
    aliases = {
        "torch.ao.quantization.quantizer": ao_quantizer_pkg,
        "torch.ao.quantization.quantizer.quantizer": ao_quantizer,
        "torch.ao.quantization.quantizer.xnnpack_quantizer": xnnpack_quantizer,
        "torch.ao.quantization.quantizer.xnnpack_quantizer_utils": xnnpack_utils,
        "torch.ao.quantization.pt2e.utils": ao_utils,
    }
    for name, module in aliases.items():
        sys.modules.setdefault(name, module)


def _to_torchao_observer(ctr: Any) -> Any:
    """torch.ao FakeQuantize.with_args(observer=X, dtype, qscheme) → torchao X.with_args(dtype, qscheme).

    Post-training calibration only needs the observer; a FakeQuantize wrapper is for QAT.
    """
    from torchao.quantization.pt2e import observer as ao_observer

    partial = getattr(ctr, "p", None)
    if partial is None:
        return ctr
    kwargs = dict(partial.keywords)
    cls = partial.func
    if cls.__module__.startswith("torchao"):
        return ctr
    if "observer" in kwargs:  # a FakeQuantize: keep its observer and the dtype/qscheme it was given
        cls = kwargs.pop("observer")
        cls = getattr(cls, "p", None) and cls.p.func or cls
    replacement = getattr(ao_observer, cls.__name__, None)
    if replacement is None:
        raise RuntimeError(f"no torchao equivalent for Core ML observer {cls.__name__}")
    return replacement.with_args(**kwargs)


def _convert_spec(spec: Any) -> Any:
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    if isinstance(spec, QuantizationSpec):  # frozen dataclass
        changes = {"observer_or_fake_quant_ctr": _to_torchao_observer(spec.observer_or_fake_quant_ctr)}
        # torch.ao's per-channel observers defaulted to axis 0; torchao passes the spec's None through.
        if spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine) and spec.ch_axis is None:
            changes["ch_axis"] = 0
        return dataclasses.replace(spec, **changes)
    return spec


def _make_adapter_class():
    from torchao.quantization.pt2e.quantizer import Quantizer

    class TorchaoObserverAdapter(Quantizer):
        """Runs CoreMLQuantizer's annotation, then makes its observer constructors torchao ones."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self.inner.annotate(model)
            for node in model.graph.nodes:
                ann = node.meta.get("quantization_annotation")
                if ann is None:
                    continue
                for key, spec in list(ann.input_qspec_map.items()):
                    ann.input_qspec_map[key] = _convert_spec(spec)
                ann.output_qspec = _convert_spec(ann.output_qspec)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            self.inner.validate(model)

    return TorchaoObserverAdapter


def _TorchaoObserverAdapter(inner):  # noqa: N802  (a factory: the class needs torchao, imported lazily)
    return _make_adapter_class()(inner)
