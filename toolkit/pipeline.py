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
    for name in names or ("tflite",):
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


def lower_for(model, target: str, int8: bool):
    """Stage 3: rewrite blocks into the forms `target` runs fast (int8: clamps and 4-D constants; float: the
    runtime's native hard-swish). Returns a copy; the caller's model is untouched."""
    from lwdeploy.quantization.lowering import lower

    return lower(model, target, int8=int8)


def export(model: str, targets: Sequence[str] = ("tflite",), *, out_dir: str | Path = DEFAULT_OUT,
           int8: bool = False, resolution: int | None = None, width: float | None = None,
           num_classes: int | None = None, weights: str | Path | None = None, pretrained: bool = False,
           calib: str | Path | None = None, calib_samples: int = 64, heldout_samples: int = 64,
           prune: float | None = None, seed: int = 0, options: dict | None = None,
           progress: Progress | None = None, keep_going: bool = False, jobs: int | None = None,
           finetune_epochs: int = 0, dataset: str | None = None) -> list[dict]:
    """Export `model` to each target and verify it; returns one manifest dict per artifact.

    With keep_going, a target that fails yields {"artifact": {...}, "error": "..."} instead of raising, so
    one unsupported operator does not stop the other targets (the matrix relies on this).
    """
    say = progress or (lambda msg: None)
    plan = check_plan(ExportPlan(model, list(targets), Path(out_dir), int8, resolution, width, num_classes,
                                 Path(weights) if weights else None, pretrained, (calib if str(calib) == "fashion-mnist" else Path(calib)) if calib else None,
                                 calib_samples, heldout_samples, prune, seed, dict(options or {}), jobs))
    from lwdeploy.converters import TARGETS, get_converter
    from lwdeploy.models.complexity import count_macs, count_params
    from lwdeploy.quantization import calibration

    say(f"building {plan.model}")
    net, info = build_model(plan)
    res = plan.resolution or info.resolution
    images = calibration.load(plan.calib, res, info.mean, info.std, plan.calib_samples, plan.heldout_samples,
                              plan.seed)
    say(f"images: {images.source} — {len(images.calib)} calibration / {len(images.heldout)} held-out crops")
    example = images.heldout[:1].clone()
    random_weights = (not plan.weights and not plan.pretrained and ":" not in plan.model
                      and Path(plan.model).suffix not in (".pt", ".pth"))
    if random_weights:
        say("random weights: re-estimating BatchNorm statistics on the calibration photos")
        settle_batchnorm(net, images.calib)
    if plan.prune:
        say(f"pruning {plan.prune:.0%} of channels")
        unpruned, net = net, prune_model(net, plan.prune, example).eval()
        # BN re-estimation always; with finetune_epochs, KD recovery from the unpruned model on `dataset`
        from lwdeploy.quantization.finetune import recover_for_export

        net.lwdeploy_pruning["recovery"] = recover_for_export(
            net, unpruned, images.calib, mean=info.mean, std=info.std, resolution=res, epochs=finetune_epochs,
            dataset=dataset, trained=not random_weights, say=say)
    elif finetune_epochs:
        raise LwdeployError("--finetune-epochs recovers a model after --prune", "add --prune R, or use "
                            "`lwdeploy finetune` to train an unpruned model")
    with torch.no_grad():
        reference = net(images.heldout)
    model_meta = {"name": info.name, "family": info.family, "spec": plan.model, "resolution": res,
                  "width": plan.width or 1.0, "num_classes": int(reference.shape[-1]),
                  "params": count_params(net), "macs": count_macs(net, res),
                  "weights": str(plan.weights) if plan.weights else ("pretrained" if plan.pretrained else
                                                                    "random init, BatchNorm statistics from calibration photos"
                                                                    if random_weights else "as built by the user's code"),
                  "pruned": plan.prune or getattr(net, "lwdeploy_pruning", {}).get("ratio"), "paper": info.paper,
                  "recovery": getattr(net, "lwdeploy_pruning", {}).get("recovery")}
    # a checkpoint MODEL names its artifacts after the file (mnv2_p0.3.pt → mnv2_p0.3_int8.tflite)
    base = Path(plan.model).stem if Path(plan.model).suffix in (".pt", ".pth") else info.name
    stem = artifact_stem(base, plan, res, info.resolution)
    manifests = []
    out_paths = {t: plan.out_dir / f"{stem}{TARGETS[t].suffix}" for t in plan.targets}
    converted = _convert_all(plan, net, info, example, images, out_paths, say)
    for target in plan.targets:
        out_path = out_paths[target]
        try:
            with captured_native_output():  # importing and running the converter stacks is noisy in C++
                conv = get_converter(target)
                outcome = converted.get(target)
                if isinstance(outcome, BaseException):
                    raise outcome
                result, convert_s = outcome or _convert(target, net, info, example, images, out_path, plan, say)
                manifest = _verify_and_record(conv, target, result, convert_s, info, images, reference, out_path,
                                              plan, model_meta, say)
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


def _convert(target, net, info, example, images, out_path, plan, say=None):
    """Lower → (quantize) → convert for one target; returns (ConversionResult, seconds)."""
    from lwdeploy.converters import get_converter
    from lwdeploy.converters.base import ExportRequest

    if say:
        say(f"{target}: lowering and {'quantizing + ' if plan.int8 else ''}converting")
    t0 = time.perf_counter()
    lowered = lower_for(net, target, plan.int8)
    req = ExportRequest(lowered, example, info, out_path, int8=plan.int8,
                        calib=images.calib_batches() if plan.int8 else [],
                        options={k: v for k, v in plan.options.items() if v is not None})
    result = get_converter(target).convert(req)
    return result, time.perf_counter() - t0


def _convert_worker(*args):
    """Child process: one target's conversion, one intra-op thread (the other worker has the other core)."""
    torch.set_num_threads(1)
    with captured_native_output():
        return _convert(*args)


def _convert_all(plan: ExportPlan, net, info, example, images, out_paths, say) -> dict:
    """Convert several targets at once in worker processes (conversion is mostly single-threaded Python and
    MLIR work, so two targets take about the time of one on two cores). Verification stays sequential in this
    process so host latencies are measured on a quiet machine. Returns {} when running sequentially."""
    import os
    import pickle

    jobs = min(plan.jobs or (os.cpu_count() or 1), len(plan.targets))
    if jobs < 2:
        return {}
    try:
        pickle.dumps((net, info, images))  # models from a user's file.py cannot cross into a child process
    except Exception:
        return {}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    say(f"converting for {', '.join(plan.targets)} in {jobs} processes")
    out: dict = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {t: pool.submit(_convert_worker, t, net, info, example, images, out_paths[t], plan)
                   for t in plan.targets}
        for target, fut in futures.items():
            try:
                out[target] = fut.result()
                say(f"{target}: converted in {out[target][1]:.0f} s")
            except Exception as e:  # re-raised (or recorded) in target order by the caller
                out[target] = e
    return out


def _verify_and_record(conv, target, result, convert_s, info, images, reference, out_path, plan, model_meta,
                       say) -> dict:
    """Verify one artifact on the host and write its manifest."""
    say(f"{target}: verifying {out_path.name}")
    t1 = time.perf_counter()
    ver = conv.verify(result.path, images.heldout, reference)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "artifact": {"file": out_path.name, "path": str(out_path), "target": target, "format": conv.suffix,
                     "sha256": sha256_of(result.path), "size_bytes": size_of(result.path),
                     "extra_files": [{"file": Path(f).name, "sha256": sha256_of(f)} for f in result.extra_files]},
        "conversion": result.details,
        "model": model_meta,
        "preprocessing": {"resolution": model_meta["resolution"], "layout": "NCHW", "color": "RGB",
                          "range": "0..1 then (x-mean)/std", "mean": list(info.mean), "std": list(info.std)},
        "quantization": result.quantization if plan.int8 else {"scheme": "none (float32)"},
        "calibration": images.describe() if plan.int8 else None,
        "verification": {"ran_on_host": ver.ran_on_host, "fidelity": ver.fidelity, "latency_ms": ver.latency_ms,
                         "checks": ver.checks, "notes": ver.notes + result.notes,
                         "heldout": {"source": images.source, "images": len(images.heldout)}},
        "timings_s": {"convert": round(convert_s, 2), "verify": round(time.perf_counter() - t1, 2)},
        "tools": tool_versions(),
    }
    write_json(manifest_path(out_path), manifest)
    return manifest
