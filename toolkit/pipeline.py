"""The one data flow: model → (prune) → (lower) → (quantize) → convert → verify → manifest.

Each stage is a function taking and returning a value; `export` strings them together for the CLI and
the Python API. Nothing here parses arguments or prints tables: callers pass a `progress` callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .atomic import write_json
from .errors import LwdeployError
from .quiet import captured_native_output
from .manifest import SCHEMA_VERSION, manifest_path, sha256_of, size_of, tool_versions

Progress = Callable[[str], None]
DEFAULT_OUT = Path("lwdeploy-out")


@dataclass
class ExportPlan:
    """Validated arguments: everything is checked here, before any slow work starts."""

    model: str
    targets: list[str]
    out_dir: Path
    int8: bool = False
    resolution: int | None = None
    width: float | None = None
    num_classes: int | None = None
    weights: Path | None = None
    pretrained: bool = False
    calib: Path | str | None = None          # a folder, or "fashion-mnist"
    calib_samples: int = 64
    heldout_samples: int = 64
    prune: float | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    jobs: int | None = None                   # conversion processes; None: one per target up to the cores


def resolve_targets(names: Sequence[str]) -> list[str]:
    from lwdeploy.converters import TARGETS, get_target

    out: list[str] = []
    # `-t tflite -t coreml` and `--target tflite,executorch,coreml` both work
    for name in [n.strip() for spec in (names or ("tflite",)) for n in str(spec).split(",") if n.strip()]:
        for n in (TARGETS if name == "all" else [get_target(name).name]):
            if n not in out:
                out.append(n)
    return out


def check_plan(plan: ExportPlan) -> ExportPlan:
    plan.targets = resolve_targets(plan.targets)
    if plan.out_dir.exists() and not plan.out_dir.is_dir():
        raise LwdeployError(f"output path {str(plan.out_dir)!r} is a file, not a folder",
                            "pass --out with a folder path (it is created if missing)")
    if plan.resolution is not None and not 16 <= plan.resolution <= 2048:
        raise LwdeployError(f"resolution {plan.resolution} is out of range", "use 16..2048 (e.g. 224)")
    if plan.width is not None and not 0 < plan.width <= 4:
        raise LwdeployError(f"width multiplier {plan.width} is out of range", "use a value in (0, 4], e.g. 0.75")
    if plan.num_classes is not None and plan.num_classes < 1:
        raise LwdeployError(f"--num-classes {plan.num_classes} must be positive", "e.g. --num-classes 10")
    if plan.calib_samples < 1 or plan.heldout_samples < 1:
        raise LwdeployError("--calib-samples and --heldout-samples must be at least 1",
                            "e.g. --calib-samples 64 --heldout-samples 64")
    if plan.prune is not None and not 0 < plan.prune < 1:
        raise LwdeployError(f"prune ratio {plan.prune} must be in (0, 1)", "e.g. --prune 0.3")
    if plan.weights is not None and not Path(plan.weights).is_file():
        raise LwdeployError(f"checkpoint {str(plan.weights)!r} does not exist", "pass a .pt/.pth state dict file")
    if plan.calib is not None and str(plan.calib) != "fashion-mnist" and not Path(plan.calib).is_dir():
        raise LwdeployError(f"calibration folder {str(plan.calib)!r} does not exist or is not a folder",
                            "pass a folder of images with --calib")
    return plan


def artifact_stem(info_name: str, plan: ExportPlan, resolution: int, default_resolution: int) -> str:
    parts = [info_name]
    if plan.width not in (None, 1.0):
        parts.append(f"w{plan.width:g}")
    if resolution != default_resolution:
        parts.append(f"r{resolution}")
    if plan.prune:
        parts.append(f"p{plan.prune:g}")
    parts.append("int8" if plan.int8 else "fp32")
    return "_".join(parts)


def target_stem(stem: str, target: str, plan: ExportPlan) -> str:
    """Per-target name: float16 exports say fp16 (not fp32), a Core ML-delegate .pte says so, so neither
    overwrites the default artifact in the same folder."""
    if plan.options.get("fp16") and not plan.int8 and target in ("tflite", "coreml") and stem.endswith("_fp32"):
        stem = stem[: -len("_fp32")] + "_fp16"
    if target == "executorch" and plan.options.get("delegate") == "coreml":
        stem += "_coreml"
    return stem


def build_model(plan: ExportPlan):
    """Stage 1: the float model (seeded, so random-weight exports are reproducible) and its info."""
    from lwdeploy.models.loader import load_model

    torch.manual_seed(plan.seed)
    checkpoint = _lwdeploy_checkpoint(plan)
    if checkpoint:  # written by `lwdeploy prune` / `finetune`: rebuild the (pruned) shapes, then load
        from dataclasses import replace

        from lwdeploy.models import get_info
        from lwdeploy.quantization.pruning import load_checkpoint

        overrides = {"num_classes": plan.num_classes, "width": plan.width}
        model, meta = load_checkpoint(checkpoint, overrides=overrides)
        if plan.model != str(checkpoint) and get_info(plan.model).name != meta["model"]:
            raise LwdeployError(f"checkpoint {checkpoint.name} is for {meta['model']}, not {plan.model}",
                                f"run `lwdeploy export {checkpoint}` (the checkpoint names its model)")
        info = get_info(meta["model"])
        n_out = (meta.get("overrides") or {}).get("num_classes") or plan.num_classes
        if n_out and n_out != info.num_classes:
            info = replace(info, num_classes=n_out)
        if meta.get("resolution") and plan.resolution is None:
            info = replace(info, resolution=int(meta["resolution"]))
        return model, info
    return load_model(plan.model, num_classes=plan.num_classes, width=plan.width, weights=plan.weights,
                      pretrained=plan.pretrained, resolution=plan.resolution)


def check_input_size(net, info, res: int, say=lambda msg: None) -> None:
    """The model runs at `res` px, or a one-line error that names the next size up it does run at."""
    from lwdeploy.models.input_size import forward_error, next_resolution

    error = forward_error(net, res)
    if error is None:
        return
    if "channels" in error:  # e.g. a user's 1-channel model: no input size helps
        raise LwdeployError(f"{info.name} does not take a (1, 3, {res}, {res}) RGB image ({error})",
                            "lwdeploy exports image classifiers with 3-channel RGB input")
    up = None
    if res < info.resolution and "input-size-bound" not in info.tags:  # bound nets are rebuilt per size
        say(f"{info.name} does not run at {res} px: looking for the next size up that it runs at")
        up = next_resolution(net, res + 1, info.resolution)
    hint = (f"the next size up it runs at is {up} px: pass --resolution {up}" if up else
            f"pass the input size the model was built for (--resolution; its default is {info.resolution})")
    raise LwdeployError(f"{info.name} does not run at {res}×{res} px ({error})", hint)


def _lwdeploy_checkpoint(plan: ExportPlan) -> Path | None:
    """The lwdeploy checkpoint this plan names, as MODEL or as --weights (plain state dicts: None)."""
    from lwdeploy.quantization.pruning import is_pruned_checkpoint

    if Path(plan.model).suffix in (".pt", ".pth"):
        if not Path(plan.model).is_file():
            raise LwdeployError(f"checkpoint {plan.model!r} does not exist", "pass a file written by `lwdeploy prune`")
        if plan.weights:
            raise LwdeployError("--weights cannot be combined with a checkpoint MODEL", "leave out --weights")
        return Path(plan.model)
    if plan.weights and is_pruned_checkpoint(plan.weights):
        return Path(plan.weights)
    return None


REFERENCE_CHUNK = 16  # held-out crops per float reference forward


@torch.no_grad()
def settle_batchnorm(model, images: torch.Tensor, limit: int = 16):
    """Re-estimate BatchNorm statistics of a randomly initialised model on real images.

    He-initialised networks with identity BatchNorm blow activations up layer by layer (GhostNet's logits
    reach ~1e6), so int8 fidelity and latency measured on them mean little. Setting each BN's running
    mean/var from real photos gives the activation ranges a trained network has; weights stay random.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    model(images[:limit])  # 16 crops give every channel 16·H·W samples: plenty for a mean and variance
    return model.eval()


def prune_model(model, ratio: float, example: torch.Tensor):
    """Stage 2 (optional): structured channel pruning."""
    from lwdeploy.quantization.pruning import prune

    return prune(model, ratio, example)


def lower_for(model, target: str, int8: bool, example=None):
    """Stage 3: rewrite blocks into the forms `target` runs fast (int8: clamps and 4-D constants; float: the
    runtime's native hard-swish). Returns a copy; the caller's model is untouched."""
    from lwdeploy.quantization.lowering import lower

    return lower(model, target, int8=int8, example=example)


def export(model: str, targets: Sequence[str] = ("tflite",), *, out_dir: str | Path = DEFAULT_OUT,
           int8: bool = False, resolution: int | None = None, width: float | None = None,
           num_classes: int | None = None, weights: str | Path | None = None, pretrained: bool = False,
           calib: str | Path | None = None, calib_samples: int = 64, heldout_samples: int = 64,
           prune: float | None = None, seed: int = 0, options: dict | None = None,
           progress: Progress | None = None, keep_going: bool = False, jobs: int | None = None,
           finetune_epochs: int = 0, dataset: str | None = None, finetune_samples: int | None = None,
           session: dict | None = None) -> list[dict]:
    """Export `model` to each target and verify it; returns one manifest dict per artifact.

    With keep_going, a target that fails yields {"artifact": {...}, "error": "..."} instead of raising, so
    one unsupported operator does not stop the other targets (the matrix relies on this).
    `session`: a dict kept by a caller that exports the same model again (the matrix: fp32, then int8). The
    float model with its settled BatchNorms, the crops, the float reference logits and the model facts are
    computed once and reused while model, size, weights, images and seed are the same (not with --prune:
    pruning and recovery run per call). Converters never modify the float model (they lower copies).
    """
    say = progress or (lambda msg: None)
    plan = check_plan(ExportPlan(model, list(targets), Path(out_dir), int8, resolution, width, num_classes,
                                 Path(weights) if weights else None, pretrained, (calib if str(calib) == "fashion-mnist" else Path(calib)) if calib else None,
                                 calib_samples, heldout_samples, prune, seed, dict(options or {}), jobs))
    from lwdeploy.converters.timing import StageTimer
    from lwdeploy.models.complexity import count_macs, count_params
    from lwdeploy.quantization import calibration

    shared = StageTimer()  # stages done once for all targets (in this process)
    key = (plan.model, plan.resolution, plan.width, plan.num_classes, str(plan.weights), plan.pretrained,
           str(plan.calib), plan.calib_samples, plan.heldout_samples, plan.seed)
    reuse = session is not None and not plan.prune and session.get("key") == key
    if reuse:
        say(f"reusing {plan.model}'s float model, crops and reference from the previous export")
        net, info, images, reference, model_meta = (session[k] for k in
                                                     ("net", "info", "images", "reference", "model_meta"))
        return _export_prepared(plan, net, info, images, reference, model_meta, shared, say, keep_going, session)
    say(f"building {plan.model}")
    with shared("build_model"):
        net, info = build_model(plan)
    res = plan.resolution or info.resolution
    with shared("check_input_size"):
        check_input_size(net, info, res, say)
    with shared("load_images"):
        images = calibration.load(plan.calib, res, info.mean, info.std, plan.calib_samples, plan.heldout_samples,
                                  plan.seed)
    say(f"images: {images.source} — {len(images.calib)} calibration / {len(images.heldout)} held-out crops")
    example = images.heldout[:1].clone()
    random_weights = (not plan.weights and not plan.pretrained and ":" not in plan.model
                      and Path(plan.model).suffix not in (".pt", ".pth"))
    if random_weights:
        say("random weights: re-estimating BatchNorm statistics on the calibration photos")
        with shared("settle_batchnorm"):
            settle_batchnorm(net, images.calib)
    if plan.prune:
        say(f"pruning {plan.prune:.0%} of channels")
        unpruned, net = net, prune_model(net, plan.prune, example).eval()
        # BN re-estimation always; with finetune_epochs, KD recovery from the unpruned model on `dataset`
        from lwdeploy.quantization.finetune import recover_for_export

        net.lwdeploy_pruning["recovery"] = recover_for_export(
            net, unpruned, images.calib, mean=info.mean, std=info.std, resolution=res, epochs=finetune_epochs,
            dataset=dataset, trained=not random_weights, samples=finetune_samples, say=say)
    elif finetune_epochs:
        raise LwdeployError("--finetune-epochs recovers a model after --prune", "add --prune R, or use "
                            "`lwdeploy finetune` to train an unpruned model")
    with torch.no_grad():
        n_classes = int(net(example).shape[-1])
    model_meta = {"name": info.name, "family": info.family, "spec": plan.model, "resolution": res,
                  "width": plan.width or 1.0, "num_classes": n_classes,
                  "params": count_params(net), "macs": count_macs(net, res),
                  "weights": str(plan.weights) if plan.weights else ("pretrained" if plan.pretrained else
                                                                    "random init, BatchNorm statistics from calibration photos"
                                                                    if random_weights else "as built by the user's code"),
                  "pruned": plan.prune or getattr(net, "lwdeploy_pruning", {}).get("ratio"), "paper": info.paper,
                  "recovery": getattr(net, "lwdeploy_pruning", {}).get("recovery")}
    if session is not None and not plan.prune:
        session.clear()
        session.update(key=key, net=net, info=info, images=images, reference=None, model_meta=model_meta)
    return _export_prepared(plan, net, info, images, None, model_meta, shared, say, keep_going, session)


def _export_prepared(plan, net, info, images, reference, model_meta, shared, say, keep_going, session):
    """Stages 3–6 for every target, from the float model, crops and (optional, cached) reference logits."""
    from lwdeploy.converters import TARGETS, get_converter

    res = model_meta["resolution"]
    example = images.heldout[:1].clone()

    def reference_forward():  # float logits for the fidelity check; overlaps the workers' start-up
        nonlocal reference
        if reference is not None:
            return
        with torch.no_grad(), shared("reference_forward"):
            # in chunks: one batch of 64 held-out crops kept ~600 MB of activations alive (MobileNetV2, 224²)
            reference = torch.cat([net(chunk) for chunk in images.heldout.split(REFERENCE_CHUNK)])
        if session is not None and session.get("net") is net:
            session["reference"] = reference

    # a checkpoint MODEL names its artifacts after the file (mnv2_p0.3.pt → mnv2_p0.3_int8.tflite)
    base = Path(plan.model).stem if Path(plan.model).suffix in (".pt", ".pth") else info.name
    stem = artifact_stem(base, plan, res, info.resolution)
    manifests = []
    out_paths = {t: plan.out_dir / f"{target_stem(stem, t, plan)}{TARGETS[t].suffix}" for t in plan.targets}
    with shared("convert_all"):
        converted = _convert_all(plan, net, info, example, images, out_paths, say, reference_forward)
    for target in plan.targets:
        out_path = out_paths[target]
        try:
            with captured_native_output():  # importing and running the converter stacks is noisy in C++
                conv = get_converter(target)
                outcome = converted[target]
                if isinstance(outcome, BaseException):
                    raise outcome
                result, convert_s = outcome
                manifest = _verify_and_record(conv, target, result, convert_s, info, images, reference, out_path,
                                              plan, model_meta, say, shared.as_dict())
        except Exception as e:
            if not keep_going:
                raise
            kind = "user" if isinstance(e, LwdeployError) else type(e).__name__
            manifest = {"artifact": {"file": out_path.name, "target": target, "format": out_path.suffix},
                        "model": model_meta, "error": f"{kind}: {str(e).strip().splitlines()[0][:500]}"
                        if str(e).strip() else kind}
            say(f"{target}: FAILED — {manifest['error']}")
        manifests.append(manifest)
    return manifests


def conversion_groups(plan: ExportPlan) -> list[list[str]]:
    """Targets converted together in one process, longest first.

    int8 ExecuTorch and Core ML annotate with the same rules (XNNPACKQuantizer's; see quantization/pt2e.py
    `_coreml_quantizer`), so they share one lowering (ExecuTorch's) and ONE calibrated PT2E program: torch.export,
    prepare, 64 calibration forwards and convert_pt2e run once instead of twice. Core ML's own CoreMLQuantizer
    (--quantizer coreml-native) keeps its own pass.
    """
    share = (plan.int8 and "executorch" in plan.targets and "coreml" in plan.targets
             and plan.options.get("quantizer") in (None, "coreml"))
    groups = [["executorch", "coreml"]] if share else []
    groups += [[t] for t in plan.targets if not (share and t in ("executorch", "coreml"))]
    cost = {"executorch": 3, "tflite": 2, "coreml": 1}  # measured order of conversion time (GhostNet int8)
    return sorted(groups, key=lambda g: -sum(cost.get(t, 1) for t in g))


def _convert(target, net, info, example, images, out_path, plan, say=None, quantized=None, lowered=None):
    """Lower → (quantize) → convert for one target; returns (ConversionResult, seconds).
    `quantized`: a calibrated PT2E program shared with another target (then `net` is not lowered again)."""
    from lwdeploy.converters import get_converter
    from lwdeploy.converters.base import ExportRequest
    from lwdeploy.converters.timing import StageTimer

    if say:
        say(f"{target}: {'lowering and ' if quantized is None else ''}"
            f"{'quantizing + ' if plan.int8 and quantized is None else ''}converting")
    t0 = time.perf_counter()
    timer = StageTimer()
    with timer("import_converter"):
        conv = get_converter(target)
    if lowered is None:
        with timer("lower"):
            lowered = quantized.module if quantized is not None else lower_for(net, target, plan.int8, example)
    req = ExportRequest(lowered, example, info, out_path, int8=plan.int8,
                        calib=images.calib_batches() if plan.int8 and quantized is None else [],
                        options={k: v for k, v in plan.options.items() if v is not None}, quantized=quantized)
    result = conv.convert(req)
    if not isinstance(lowered, torch.fx.GraphModule):  # a program handed over from another process has no modules
        from lwdeploy.quantization.lowering import rewrites

        # the manifest says which blocks were rewritten into another form before export, and where
        result.details["lowering"] = rewrites(lowered)
    timer.merge(result.timings)
    result.timings = timer.as_dict()
    return result, time.perf_counter() - t0


@dataclass
class _Shared:
    """One group's lowering + calibrated int8 program, and what making them cost (booked on its first target)."""

    lowered: object
    quantized: object
    timer: object
    seconds: float


def _shared_quantization(targets, net, example, images, plan, say=None) -> _Shared:
    from lwdeploy.converters.provenance import shared_node_provenance
    from lwdeploy.converters.timing import StageTimer
    from lwdeploy.quantization import export_options, quantize

    t0 = time.perf_counter()
    if say:
        say(f"{' + '.join(targets)}: lowering and quantizing once for all of them")
    timer = StageTimer()
    with timer("lower"):
        lowered = lower_for(net, targets[0], plan.int8, example)
    with shared_node_provenance():  # cheaper torch.export / prepare_pt2e (converters/provenance.py)
        quantized = quantize(lowered, example, targets[0], images.calib_batches(), timings=timer,
                             **export_options(plan.options))
    return _Shared(lowered, quantized, timer, time.perf_counter() - t0)


def _convert_group(targets, net, info, example, images, out_paths, plan, say=None, shared=None) -> dict:
    """Convert `targets` one after another in this process; {target: (result, seconds) or the exception}.
    A group of several shares the lowering and the calibrated int8 program (conversion_groups)."""
    out: dict = {}
    if len(targets) > 1 and shared is None:
        try:
            shared = _shared_quantization(targets, net, example, images, plan, say)
        except Exception as e:  # the same failure would hit every target of the group
            return {t: e for t in targets}
    for target in targets:
        try:
            result, seconds = _convert(target, net, info, example, images, out_paths[target], plan, say,
                                       quantized=shared and shared.quantized, lowered=shared and shared.lowered)
            out[target] = (result, seconds)
        except Exception as e:  # re-raised (or recorded) in target order by the caller
            out[target] = e
    return out


def _book_shared(out: dict, target: str, shared) -> None:
    """Add the group's shared lowering/calibration to `target`'s timings (once per group)."""
    if shared is None or not isinstance(out.get(target), tuple):
        return
    result, seconds = out[target]
    shared.timer.merge(result.timings)
    result.timings = shared.timer.as_dict()
    out[target] = (result, seconds + shared.seconds)


def _picklable(out: dict) -> dict:
    import pickle

    for target, value in out.items():  # an exception that cannot be pickled would lose every result
        try:
            pickle.dumps(value)
        except Exception:
            out[target] = RuntimeError(f"{type(value).__name__}: {value}")
    return out


def _convert_worker(*args):
    """Child process: one group's conversions, one intra-op thread (the parent has the other core)."""
    torch.set_num_threads(1)
    with captured_native_output():
        return _picklable(_convert_group(*args))


def _convert_worker_program(target, program: bytes, scheme: dict, info, example, images, out_path, plan):
    """Child process: convert `target` from a calibrated int8 program made in the parent (torch.export.save
    bytes; an FX GraphModule itself does not pickle)."""
    import io

    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops the program calls)

    from lwdeploy.quantization.pt2e import QuantizedModel

    torch.set_num_threads(1)
    with captured_native_output():
        try:
            module = torch.export.load(io.BytesIO(program)).module()
            quantized = QuantizedModel(module=module, quantizer=None, scheme=scheme)
            out = {target: _convert(target, None, info, example, images, out_path, plan, quantized=quantized)}
        except Exception as e:
            out = {target: e}
    return _picklable(out)


def _convert_all(plan: ExportPlan, net, info, example, images, out_paths, say, while_converting=None) -> dict:
    """Convert every target: {target: (result, seconds) or exception}.

    Conversion is mostly single-threaded Python and MLIR work, so groups run at once: the longest group in
    this process, the others in worker processes (spawned: a fresh interpreter; importing the converter
    stacks costs each a few seconds). When this process's group shares one calibrated int8 program
    (ExecuTorch + Core ML), it calibrates, then hands the program to the workers for the group's other
    targets (Core ML queues behind TFLite) and keeps only ExecuTorch's long lowering for itself.
    `while_converting()` runs here once this process's own conversions are done (the float reference forward
    overlaps the workers' last conversions). Verification stays sequential in the caller so host latencies
    are measured on a quiet machine.
    """
    import os
    import pickle

    groups = conversion_groups(plan)
    n_processes = len(groups) + (1 if len(groups[0]) > 1 else 0)
    jobs = min(plan.jobs or (os.cpu_count() or 1), n_processes)
    if jobs >= 2:
        try:
            pickle.dumps((net, info, images))  # models from a user's file.py cannot cross into a child process
        except Exception:
            jobs = 1
    out: dict = {}
    if jobs < 2:
        if while_converting:
            while_converting()
        for group in groups:
            shared = None
            if len(group) > 1:
                try:
                    shared = _shared_quantization(group, net, example, images, plan, say)
                except Exception as e:
                    out.update({t: e for t in group})
                    continue
            with captured_native_output():
                out.update(_convert_group(group, net, info, example, images, out_paths, plan, say, shared))
            _book_shared(out, group[0], shared)
        return out
    import io
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from lwdeploy.models.loader import import_user_modules, user_modules

    say(f"converting for {', '.join(plan.targets)}: {' | '.join(' + '.join(g) for g in groups)} "
        f"({jobs} processes)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers have the other core(s)
    try:
        with ProcessPoolExecutor(max_workers=jobs - 1, mp_context=mp.get_context("spawn"),
                                 initializer=import_user_modules, initargs=(user_modules(),)) as pool:
            futures = [(g, pool.submit(_convert_worker, g, net, info, example, images, out_paths, plan))
                       for g in groups[1:]]
            mine, shared = groups[0], None
            if len(mine) > 1:
                try:
                    from lwdeploy.converters.provenance import shared_node_provenance

                    with captured_native_output():
                        shared = _shared_quantization(mine, net, example, images, plan, say)
                        with shared.timer("handoff_export"), shared_node_provenance():
                            ep = torch.export.export(shared.quantized.module, (example,))
                            buf = io.BytesIO()
                            torch.export.save(ep, buf)
                        shared.quantized.exported = ep  # the same export ExecuTorch needs: not done twice
                    for target in mine[1:]:
                        say(f"{target}: handing the calibrated int8 program to a worker process")
                        futures.append(([target], pool.submit(_convert_worker_program, target, buf.getvalue(),
                                                              shared.quantized.scheme, info, example, images,
                                                              out_paths[target], plan)))
                    mine = mine[:1]
                except Exception as e:
                    out.update({t: e for t in mine})
                    mine = []
            if mine:
                with captured_native_output():
                    out.update(_convert_group(mine, net, info, example, images, out_paths, plan, say, shared))
                _book_shared(out, mine[0], shared)
            if while_converting:  # this process's part is done: the rest overlaps the workers
                while_converting()
            for group, fut in futures:
                try:
                    out.update(fut.result())
                except BrokenProcessPool:  # the worker itself died (killed, out of memory, a crash in C++)
                    err = LwdeployError(f"the converter process for {', '.join(group)} died before it finished",
                                        "rerun with --jobs 1 to convert in this process and see why")
                    out.update({t: err for t in group})
                except Exception as e:
                    out.update({t: e for t in group})
    finally:
        torch.set_num_threads(threads)
    for target, value in out.items():
        if not isinstance(value, BaseException):
            say(f"{target}: converted in {value[1]:.0f} s")
    return out


def input_layout(target: str, plan: ExportPlan) -> str:
    """'NHWC' where --nhwc applies to `target` (TFLite: shape (1,H,W,3); ExecuTorch: (1,3,H,W) in channels-last
    dim order), else 'NCHW': an app fills the input buffer in this order."""
    from lwdeploy.converters import TARGETS

    takes_nhwc = any(o.key == "nhwc" for o in TARGETS[target].options)
    return "NHWC" if plan.options.get("nhwc") and takes_nhwc else "NCHW"


def _verify_and_record(conv, target, result, convert_s, info, images, reference, out_path, plan, model_meta,
                       say, shared_timings: dict | None = None) -> dict:
    """Verify one artifact on the host and write its manifest."""
    say(f"{target}: verifying {out_path.name}")
    t1 = time.perf_counter()
    ver = conv.verify(result.path, images.heldout, reference)
    loads = str(ver.checks.get("loads", ""))
    if loads.startswith("FAILED"):
        # a program its own runtime refuses (XNNPACK compiles the delegate at load time) is no artifact: remove
        # it rather than ship a file that fails on the phone as it did here
        for f in (result.path, *result.extra_files):
            Path(f).unlink(missing_ok=True)
        raise LwdeployError(f"the {target} runtime cannot load the exported {out_path.name} "
                            f"({loads.removeprefix('FAILED: ').splitlines()[0][:200]}); nothing was written",
                            "export this model for another target or without --int8, and report it")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "artifact": {"file": out_path.name, "path": str(out_path), "target": target, "format": conv.suffix,
                     "sha256": sha256_of(result.path), "size_bytes": size_of(result.path),
                     "extra_files": [{"file": Path(f).name, "sha256": sha256_of(f)} for f in result.extra_files]},
        "conversion": result.details,
        "model": model_meta,
        "preprocessing": {"resolution": model_meta["resolution"], "layout": input_layout(target, plan), "color": "RGB",
                          "range": "0..1 then (x-mean)/std", "mean": list(info.mean), "std": list(info.std)},
        "quantization": result.quantization if plan.int8 else {"scheme": "none (float32)"},
        "calibration": images.describe() if plan.int8 else None,
        "verification": {"ran_on_host": ver.ran_on_host, "fidelity": ver.fidelity, "latency_ms": ver.latency_ms,
                         "checks": ver.checks, "notes": ver.notes + result.notes,
                         "heldout": {"source": images.source, "images": len(images.heldout)}},
        "timings_s": {"convert": round(convert_s, 2), "verify": round(time.perf_counter() - t1, 2)},
        # per stage {wall_s, cpu_s}: `convert` in the process that converted this target (a group's shared lowering
        # and int8 calibration are booked on its first target), `shared` once for all targets in the main process
        # (convert_all: the wall time of all conversions, run in parallel)
        "timings": {"shared": shared_timings or {}, "convert": result.timings, "verify": ver.timings},
        "tools": tool_versions(),
    }
    write_json(manifest_path(out_path), manifest)
    return manifest
