"""int8 vs float on TFLite and ExecuTorch for the zoo CNNs — one command, JSON + markdown out.

    python benchmarks/int8_bench.py                       # every zoo CNN, both targets
    python benchmarks/int8_bench.py --models mobilenet_v3_small_100,efficientnet_lite0 --quick
    python benchmarks/int8_bench.py --docs docs/int8.md   # also (re)write the docs page
    python benchmarks/int8_bench.py --models efficientnet_lite0 --heldout 1000 \
        --recipes nearest,early,adaround,adaround+distill  # one int8 artifact per quantization recipe

Per model and target it builds three artifacts from the same seeded model:
  float    lower(model, target, int8=False) → float export (native HARD_SWISH, no PAD ops)
  int8     lwdeploy path: lower(model, target) → quantization.pt2e.quantize (target's PT2E quantizer)
  vendor   reference: the vendor's documented PT2E recipe on the UNlowered model (non-strict export, the
           target's quantizer) — for MobileNetV2 always, for every model with --vendor-all
and measures host latency (interleaved rounds, median; ≥100 warm-up invokes for TFLite, whose int8 runs
~2× slow for its first ~30), size, TRANSPOSE / QUANTIZE / DEQUANTIZE / PAD counts, delegate partitions, and
fidelity against the float PyTorch model on held-out real-photo crops (lwdeploy.quantization.fidelity).
Results go to benchmarks/results/int8_<time>.{json,md} (gitignored). Targets checked (issue #4): int8 ≤ 0.6×
float latency, ≤ 1 TRANSPOSE per model input/output, one delegate partition, int8 size ≤ 0.27× float.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_LATENCY_RATIO, TARGET_SIZE_RATIO = 0.6, 0.27


# ------------------------------------------------------------------------------------------------ export

def _vendor_quantized(model, example, calib, target):
    """The vendor recipe: torch.export (non-strict) → target quantizer → prepare/calibrate/convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if target == "tflite":
        from litert_torch.quantize import pt2e_quantizer as pq

        q = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        fold = False
    else:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)

        q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        fold = True
    gm = prepare_pt2e(torch.export.export(model.eval(), (example,)).module(), q)
    with torch.no_grad():
        for c in calib:
            gm(c)
    return convert_pt2e(gm, fold_quantize=fold), q


KEEP_FLOAT_BUDGET: float | None = None      # --keep-float-budget
RECIPES = ["early"]                         # --weight-rounding / --recipes: one int8 variant per recipe
DISTILL_STEPS = 40                          # --distill-steps, for recipes with "distill"
BIAS_CORRECTION = True                      # --no-bias-correction


def _recipe_options(recipe: str) -> dict:
    """quantize() keywords for a recipe: a weight rounding ("early", the default, "nearest" or "adaround"),
    optionally "+distill"; "distill" alone is the default rounding + distillation."""
    from lwdeploy.quantization.pt2e import WEIGHT_ROUNDINGS

    parts = set(recipe.split("+"))
    rounding = next((r for r in WEIGHT_ROUNDINGS if r in parts), "early")   # main() allows at most one
    return {"weight_rounding": rounding,
            "distill_steps": DISTILL_STEPS if "distill" in parts else 0}


def _quantized(model, example, calib, target, vendor, recipe=None, keep_float=None):
    if vendor:
        return _vendor_quantized(model, example, calib, target)
    from lwdeploy.quantization.pt2e import quantize

    qm = quantize(model, example, target, calib, keep_float=keep_float, keep_float_budget=KEEP_FLOAT_BUDGET,
                  bias_correction=BIAS_CORRECTION, **_recipe_options(recipe or RECIPES[0]))
    return qm.module, qm.quantizer


def export_tflite(model, example, path: Path, *, int8: bool, calib=None, vendor: bool = False, recipe=None,
                  keep_float=None) -> Path:
    import litert_torch

    model = copy.deepcopy(model).eval()
    if int8:
        from litert_torch.quantize.quant_config import QuantConfig

        gm, q = _quantized(model, example, calib or [example], "tflite", vendor, recipe, keep_float)
        edge = litert_torch.convert(gm, (example,), quant_config=QuantConfig(pt2e_quantizer=q))
    else:
        edge = litert_torch.convert(model, (example,))
    data = edge.model_content()
    if not vendor:  # what `lwdeploy export` writes: each distinct quantization vector once (tflite_pack.py)
        from lwdeploy.converters.tflite_pack import repack

        data = repack(data)
    Path(path).write_bytes(data)
    return Path(path)


def export_executorch(model, example, path: Path, *, int8: bool, calib=None, vendor: bool = False,
                      recipe=None, keep_float=None) -> tuple[Path, dict]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = copy.deepcopy(model).eval()
    if int8:
        gm, _ = _quantized(model, example, calib or [example], "executorch", vendor, recipe, keep_float)
        ep = torch.export.export(gm, (example,))
    else:
        ep = torch.export.export(model, (example,))
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    ops = collections.Counter()
    for n in edge.exported_program().graph_module.graph.nodes:
        if n.op == "call_function":
            ops[str(n.target).split("::")[-1].split(".")[0].replace("aten_", "")] += 1
    Path(path).write_bytes(edge.to_executorch().buffer)
    partitions = ops.pop("executorch_call_delegate", 0)
    ops.pop("getitem", None)
    ops.pop("<built-in function getitem>", None)
    return Path(path), {"partitions": partitions, "ops_outside_delegate": dict(ops)}


# ------------------------------------------------------------------------------------------------ inspect

def tflite_op_counts(path: Path) -> collections.Counter:
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in schema.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    counts = collections.Counter()
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for i in range(g.OperatorsLength()):
            code = model.OperatorCodes(g.Operators(i).OpcodeIndex())
            counts[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")] += 1
    return counts


@contextlib.contextmanager
def _quiet_stderr():
    """The TFLite runtime logs delegate creation on fd 2 for every interpreter; keep the table readable."""
    try:
        fd = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _tflite_interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    with _quiet_stderr():
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    return it


def tflite_partitions(path: Path, threads: int = 2) -> int:
    """Delegate kernels in the execution plan (XNNPACK is applied by default): 1 = the whole graph."""
    it = _tflite_interpreter(path, threads)
    return sum(1 for op in it._get_ops_details() if op["op_name"] == "DELEGATE")


def tflite_run(path: Path, images: torch.Tensor, threads: int = 2) -> np.ndarray:
    it = _tflite_interpreter(path, threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for x in images:
        a = x.unsqueeze(0).numpy()
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            a = np.clip(np.round(a / s + z), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], a)
        it.invoke()
        o = it.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            s, z = out["quantization"]
            o = (o.astype(np.float32) - z) * s
        res.append(o.reshape(-1).copy())
    return np.stack(res)


def executorch_run(path: Path, images: torch.Tensor) -> np.ndarray:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return np.stack([method.execute([x.unsqueeze(0)])[0].reshape(-1).numpy() for x in images])


# ------------------------------------------------------------------------------------------------ timing

def time_interleaved(runners: dict[str, Any], warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Each runner is a no-arg callable. Warm all up, then time them in turn, round after round, so load
    from anything else on the machine falls on every variant alike.

    Two clocks: wall time (perf_counter) and the calling thread's CPU time (thread_time). With one runtime
    thread the work runs on the calling thread, so CPU time is the cost of the model itself and does not
    move when other processes share the cores (measured: wall medians swung 2-4× on this shared 2-core
    machine, CPU-time medians within 5%). Ratios against float use CPU time when threads == 1."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, fn in runners.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.thread_time() - c0) * 1e3)
    return {k: {"median_ms": round(float(np.median(wall[k])), 3), "p10_ms": round(float(np.percentile(wall[k], 10)), 3),
                "p90_ms": round(float(np.percentile(wall[k], 90)), 3),
                "cpu_median_ms": round(float(np.median(cpu[k])), 3)} for k in runners}


def _tflite_invoker(path: Path, threads: int, x: torch.Tensor):
    it = _tflite_interpreter(path, threads)
    d = it.get_input_details()[0]
    a = x.numpy() if d["dtype"] == np.float32 else np.zeros(d["shape"], d["dtype"])
    it.set_tensor(d["index"], a)
    return it.invoke


def _executorch_invoker(path: Path, x: torch.Tensor, threads: int):
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(threads)       # XNNPACK's pool defaults to every core; match --threads

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda: method.execute([x])


def invoker(path: Path, x: torch.Tensor, threads: int = 1):
    """A no-arg callable that runs the exported file once on `x`: a .tflite in the LiteRT interpreter, a .pte in
    the ExecuTorch runtime (by suffix)."""
    return _tflite_invoker(path, threads, x) if Path(path).suffix == ".tflite" else _executorch_invoker(path, x, threads)


# ------------------------------------------------------------------------------------------------ bench

def bench_model(name: str, targets: list[str], args, work: Path, say) -> dict:
    import lwdeploy.models as zoo
    from lwdeploy.quantization.calibration import real_photos
    from lwdeploy.quantization.fidelity import compare_outputs
    from lwdeploy.quantization.lowering import lower

    torch.manual_seed(args.seed)
    pretrained = name in args.pretrained
    model = zoo.create(name, pretrained=pretrained).eval()
    info = zoo.get_info(name)
    res = args.resolution or info.resolution
    images = real_photos(res, info.mean, info.std, args.calib, args.heldout, args.seed)
    if not pretrained:
        # as the export pipeline does: random weights with identity BatchNorm give exploding activations
        from lwdeploy.pipeline import settle_batchnorm

        settle_batchnorm(model, images.calib)
    calib = images.calib_batches()
    example = images.heldout[:1].clone()
    with torch.no_grad():
        reference = torch.cat([model(images.heldout[i:i + 8]) for i in range(0, len(images.heldout), 8)])
    row: dict[str, Any] = {"model": name, "resolution": res,
                           "weights": "pretrained" if pretrained else "random init, BatchNorm statistics from the calibration crops",
                           "calibration": images.describe(), "targets": {}}
    vendor = args.vendor_all or name.startswith("mobilenet_v2")
    if args.simulated:
        return _simulated(row, model, images, example, calib, reference, targets, say, args.subset)
    for target in targets:
        say(f"{name} / {target}: exporting")
        variants: dict[str, dict] = {}
        try:
            # one int8 variant per recipe ("int8" for the first, "int8_<recipe>" for the others), one float
            recipes = {("int8" if i == 0 else "int8_" + r.replace("+", "_")): r for i, r in enumerate(RECIPES)}
            for kind in ["float", *recipes] + (["vendor_int8"] if vendor else []):
                int8 = kind != "float"
                recipe = recipes.get(kind)
                src = model if kind == "vendor_int8" else lower(model, target, int8=int8, example=example)
                t0 = time.perf_counter()
                if target == "tflite":
                    with contextlib.redirect_stdout(sys.stderr):     # litert-torch prints progress on stdout
                        path = export_tflite(src, example, work / f"{name}_{kind}.tflite", int8=int8,
                                             calib=calib, vendor=kind == "vendor_int8", recipe=recipe)
                    ops = tflite_op_counts(path)
                    v = {"ops": {k: ops.get(k, 0) for k in ("TRANSPOSE", "QUANTIZE", "DEQUANTIZE", "PAD",
                                                             "HARD_SWISH")},
                         "partitions": tflite_partitions(path, args.threads)}
                    outputs = tflite_run(path, images.heldout, args.threads)
                else:
                    path, structure = export_executorch(src, example, work / f"{name}_{kind}.pte", int8=int8,
                                                        calib=calib, vendor=kind == "vendor_int8", recipe=recipe)
                    v = dict(structure)
                    outputs = executorch_run(path, images.heldout)
                v["export_s"] = round(time.perf_counter() - t0, 1)
                v["size_bytes"] = path.stat().st_size
                outputs = torch.from_numpy(outputs).reshape(reference.shape)
                v["fidelity"] = compare_outputs(reference, outputs)
                if 0 < args.subset < len(reference):     # the same crops a --heldout SUBSET run measures
                    v[f"fidelity_first_{args.subset}"] = compare_outputs(reference[:args.subset], outputs[:args.subset])
                v["path"] = path
                variants[kind] = v
            say(f"{name} / {target}: timing {len(variants)} variants")
            if target == "tflite":
                runners = {k: _tflite_invoker(v["path"], args.threads, example) for k, v in variants.items()}
                warmup = max(100, args.warmup)
            else:
                runners = {k: _executorch_invoker(v["path"], example, args.threads) for k, v in variants.items()}
                warmup = args.warmup
            for k, t in time_interleaved(runners, warmup, args.rounds).items():
                variants[k]["latency"] = t
        except Exception as e:  # one failing export must not lose the rest of the table
            row["targets"][target] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            say(f"{name} / {target}: FAILED {row['targets'][target]['error']}")
            continue
        for v in variants.values():
            v.pop("path")
        f = variants["float"]
        for k, v in variants.items():
            if k == "float":
                continue
            clock = "cpu_median_ms" if args.threads == 1 else "median_ms"
            v["latency_ratio"] = round(v["latency"][clock] / f["latency"][clock], 3)
            v["latency_clock"] = clock
            v["size_ratio"] = round(v["size_bytes"] / f["size_bytes"], 3)
            transposes = v["ops"]["TRANSPOSE"] if target == "tflite" else 0
            v["targets_met"] = {
                "latency<=0.6x": v["latency_ratio"] <= TARGET_LATENCY_RATIO,
                "size<=0.27x": v["size_ratio"] <= TARGET_SIZE_RATIO,
                "one_partition": v["partitions"] == 1 and not v.get("ops_outside_delegate"),
                "transpose<=io": transposes <= 2,     # one NCHW input (+ a 4-D output at most)
            }
        row["targets"][target] = variants
    return row


def _simulated(row, model, images, example, calib, reference, targets, say, subset: int) -> dict:
    """--simulated: fidelity of the quantized PT2E program itself (int8 simulated in PyTorch), no artifact,
    no timing — minutes faster, for trying quantization recipes before exporting."""
    from lwdeploy.quantization.fidelity import compare_outputs
    from lwdeploy.quantization.lowering import lower
    from lwdeploy.quantization.pt2e import quantize

    for target in targets:
        row["targets"][target] = {}
        for recipe in RECIPES:
            say(f"{row['model']} / {target}: simulated int8, {recipe}")
            t0, c0 = time.perf_counter(), time.process_time()
            qm = quantize(lower(model, target, int8=True, example=example), example, target, calib,
                          keep_float_budget=KEEP_FLOAT_BUDGET, bias_correction=BIAS_CORRECTION,
                          **_recipe_options(recipe))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            with torch.no_grad():
                out = torch.cat([qm.module(x.unsqueeze(0)) for x in images.heldout]).reshape(reference.shape)
            row["targets"][target][f"int8_simulated_{recipe}"] = {
                "fidelity": compare_outputs(reference, out),
                **({f"fidelity_first_{subset}": compare_outputs(reference[:subset], out[:subset])}
                   if 0 < subset < len(reference) else {}),
                "quantize_wall_s": round(wall, 1), "quantize_cpu_s": round(cpu, 1),
                "weight_rounding": qm.scheme.get("weight_rounding"), "bias_correction": qm.scheme.get("bias_correction"),
                "distillation": qm.scheme.get("distillation")}
    return row


def simulated_markdown(rows: list[dict]) -> str:
    lines = ["| model | target | weight rounding | distillation | bias correction | crops | top-1 agree | top-5 contain | "
             "out SQNR dB | quantize wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for target, variants in r["targets"].items():
            for v in variants.values():
                for key, f in v.items():
                    if not key.startswith("fidelity"):
                        continue
                    crops = key.rsplit("_", 1)[1] if key != "fidelity" else f"all {r['calibration']['heldout_images']}"
                    d = v.get("distillation")
                    distilled = f"{d['steps']} steps" if isinstance(d, dict) else "off"
                    lines.append(f"| {r['model']} | {target} | {v['weight_rounding']} | {distilled} | {v['bias_correction']} | "
                                 f"{crops} | {f['top1_agreement']:.3f} | {f['top5_containment']:.3f} | "
                                 f"{f['output_sqnr_db']} | {v['quantize_wall_s']} | {v['quantize_cpu_s']} |")
    return "\n".join(lines) + "\n"


def _has_hswish_or_se(model) -> bool:
    from torch import nn

    from lwdeploy.models import layers

    kinds = (nn.Hardswish, nn.Hardsigmoid, layers.HardSwish, layers.HardSigmoid, layers.SqueezeExcite)
    return any(isinstance(m, kinds) for m in model.modules())


def _has_normalization(model) -> bool:
    from torch import nn

    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) for m in model.modules())


@torch.no_grad()
def _logits(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


# Below this float accuracy a model has learned too little for its int8 drop to mean anything (int8 and float
# then disagree on most images; a net stuck at chance "keeps its accuracy" trivially): no verdict.
UNTRAINED_BELOW_PCT = 50.0
FASHION_VAL_IMAGES = 2000   # the last images of the train split: never trained on when --fashion-train ≤ 58 000


def bench_fashion(name: str, targets: list[str], args, work: Path, say) -> dict:
    """Issue #4's accuracy target: a zoo CNN trained briefly on Fashion-MNIST (small resolution), then its
    int8 artifacts' test accuracy against the float model's (within 0.3 pt for ReLU6 models, 0.5 pt for
    hard-swish/SE models). Calibration: the train split (calibration.fashion_mnist); test split held out."""
    import lwdeploy.models as zoo
    from lwdeploy.models.input_size import forward_error, next_resolution
    from lwdeploy.quantization.calibration import fashion_mnist
    from lwdeploy.quantization.datasets import FashionMNIST
    from lwdeploy.quantization.finetune import TrainConfig, train
    from lwdeploy.quantization.lowering import lower

    torch.manual_seed(args.seed)
    info = zoo.get_info(name)
    res = args.fashion_resolution
    # models whose layers are tied to the input size (DiCENet) are built for the small resolution
    model = zoo.create(name, num_classes=10, **({"resolution": res} if "input-size-bound" in info.tags else {}))
    # SqueezeNet 1.0's unpadded pools need ≥ 35 px: such a model trains at the next multiple of 8 it runs at
    if forward_error(model, res) is not None:
        up = next_resolution(model, res + 1, info.resolution)
        if up is None:
            raise RuntimeError(f"{name} does not run at {res} px: {forward_error(model, res)}")
        res = next((r for r in range(-(-up // 8) * 8, info.resolution + 1, 8) if forward_error(model, r) is None), up)
        say(f"{name}: does not run at {args.fashion_resolution} px; training at {res} px (the next size up it runs "
            f"at is {up})")
    train_ds = FashionMNIST(train=True, resolution=res, mean=info.mean, std=info.std, limit=args.fashion_train)
    full = FashionMNIST(train=True, resolution=res, mean=info.mean, std=info.std)
    val_idx = range(len(full) - FASHION_VAL_IMAGES, len(full))
    x_val, y_val = torch.stack([full[i][0] for i in val_idx]), full.labels[len(full) - FASHION_VAL_IMAGES:]
    # nets without normalization layers die at AdamW 2e-3 (SqueezeNet 1.0 stays at chance); 5e-4 trains them
    cfg = TrainConfig(epochs=args.fashion_epochs, batch_size=128, seed=args.seed,
                      **({} if _has_normalization(model) else {"lr": 5e-4}))
    say(f"{name}: training {args.fashion_epochs} epoch(s) on {len(train_ds)} Fashion-MNIST images at {res} px")
    t0, c0 = time.perf_counter(), time.process_time()
    train(model, train_ds, cfg, progress=False)
    epochs, val_acc = args.fashion_epochs, _accuracy(_logits(model, x_val), y_val)
    # "briefly" must still mean "trained": one more epoch (a warm restart of the schedule) while the held-out
    # train images say the model is below --fashion-min-acc, up to --fashion-max-epochs
    while val_acc < args.fashion_min_acc and epochs < args.fashion_max_epochs:
        say(f"{name}: {val_acc:.1f} % on {FASHION_VAL_IMAGES} held-out train images after {epochs} epoch(s); one more")
        train(model, train_ds, replace(cfg, epochs=1, seed=args.seed + epochs), progress=False)
        epochs, val_acc = epochs + 1, _accuracy(_logits(model, x_val), y_val)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    test_ds = FashionMNIST(train=False, resolution=res, mean=info.mean, std=info.std, limit=args.fashion_test)
    x_test = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    y_test = test_ds.labels[: len(x_test)]
    float_logits = _logits(model, x_test)
    float_acc = _accuracy(float_logits, y_test)
    tolerance = 0.5 if _has_hswish_or_se(model) else 0.3
    images = fashion_mnist(res, info.mean, info.std, n_calib=args.calib, n_heldout=1, seed=args.seed)
    calib, example = images.calib_batches(), images.calib[:1].clone()
    row: dict[str, Any] = {"model": name, "resolution": res, "fashion": True,
                           "train": {"epochs": epochs, "images": len(train_ds), "lr": cfg.lr,
                                     "val_acc": round(val_acc, 2), "wall_s": round(train_s, 1),
                                     "cpu_s": round(train_cpu, 1)},
                           "test_images": len(x_test), "float_acc": round(float_acc, 2),
                           "tolerance_pt": tolerance, "calibration": images.describe(), "targets": {}}
    # --keep-float-groups: one more int8 variant per group, its modules (path ending in one of the group's
    # '|'-separated suffixes) kept float: which layers carry the int8 error?
    groups = {g: [n for n, _ in model.named_modules() if n and n.endswith(tuple(g.split("|")))]
              for g in (args.keep_float_groups or "").split(",") if g}
    for target in targets:
        for group, paths in [(None, None)] + list(groups.items()):
            say(f"{name} / {target}: int8 export{f' ({group} float)' if group else ''} + {len(x_test)} test images")
            try:
                src = lower(model, target, int8=True, example=example)
                if target == "tflite":
                    with contextlib.redirect_stdout(sys.stderr):
                        path = export_tflite(src, example, work / f"{name}_fashion.tflite", int8=True, calib=calib,
                                             keep_float=paths)
                    out = tflite_run(path, x_test, args.threads)
                else:
                    path, _ = export_executorch(src, example, work / f"{name}_fashion.pte", int8=True, calib=calib,
                                                keep_float=paths)
                    out = executorch_run(path, x_test)
            except Exception as e:
                cell = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            else:
                logits = torch.from_numpy(out).reshape(float_logits.shape)
                acc = _accuracy(logits, y_test)
                cell = {"int8_acc": round(acc, 2), "drop_pt": round(float_acc - acc, 2),
                        "met": float_acc - acc <= tolerance,
                        "top1_agreement": float((logits.argmax(1) == float_logits.argmax(1)).float().mean())}
            if group is None:
                row["targets"][target] = cell
            else:
                row.setdefault("keep_float_groups", {}).setdefault(target, {})[group] = {**cell, "modules": len(paths)}
    return row


def fashion_tables(rows: list[dict], describe: str = "") -> str:
    """The accuracy table, and the --keep-float-groups table when the rows have one."""
    groups = groups_markdown(rows)
    return fashion_markdown(rows, describe) + (
        "\nWith each group of layers kept float (`--keep-float-groups`):\n\n" + groups if groups else "")


def groups_markdown(rows: list[dict]) -> str:
    """The --keep-float-groups variants: int8 accuracy with each group of layers kept float."""
    lines = ["| model | target | kept float | modules | int8 acc % | drop pt | ± s.e. pt | int8/float top-1 agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for target, by_group in (r.get("keep_float_groups") or {}).items():
            base = r["targets"].get(target, {})
            for group, v in [("(none)", {**base, "modules": 0})] + list(by_group.items()):
                group = group.replace("|", "\\|")  # a literal '|' would end the markdown cell
                if "error" in v:
                    lines.append(f"| {r['model']} | {target} | {group} | {v['modules']} | FAILED: {v['error']} | | | |")
                    continue
                lines.append(f"| {r['model']} | {target} | {group} | {v['modules']} | {v['int8_acc']:.2f} | "
                             f"{v['drop_pt']:+.2f} | {_drop_se(r, v):.2f} | {v['top1_agreement']:.3f} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def fashion_markdown(rows: list[dict], describe: str = "") -> str:
    lines = ([describe.strip(), ""] if describe.strip() else []) + [
        "| model | px | training | float acc % | target | int8 acc % | drop pt | ± s.e. pt | allowed pt | met | "
        "int8/float top-1 agreement |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = [(r, t, v) for r in rows if "error" not in r for t, v in r["targets"].items() if "error" not in v]
    untrained = {r["model"] for r, _, _ in cells if r["float_acc"] < UNTRAINED_BELOW_PCT}
    judged = [(r, t, v) for r, t, v in cells if r["model"] not in untrained]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | FAILED: {r['error']} | | | | | |")
            continue
        tr = f"{r['train']['epochs']} ep × {r['train']['images']} img, {r['train']['cpu_s']:.0f} CPU s"
        for target, v in r["targets"].items():
            if "error" in v:
                lines.append(f"| {r['model']} | {r['resolution']} | {tr} | {r['float_acc']:.2f} | {target} | FAILED: "
                             f"{v['error']} | | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['resolution']} | {tr} | {r['float_acc']:.2f} | {target} | "
                         f"{v['int8_acc']:.2f} | {v['drop_pt']:+.2f} | {_drop_se(r, v):.2f} | {r['tolerance_pt']} | "
                         f"{_verdict(r, v)} | {v['top1_agreement']:.3f} |")
    if not cells:
        return "\n".join(lines) + "\n"
    per_target = "; ".join(f"{t} {sum(v['met'] for _, tt, v in judged if tt == t)}/"
                           f"{sum(tt == t for _, tt, _ in judged)}" for t in dict.fromkeys(t for _, t, _ in cells))
    failed = len(rows) - len({r["model"] for r, _, _ in cells})
    misses = [(r, t, v) for r, t, v in judged if not v["met"]]
    noise = [f"{r['model']} {t}" for r, t, v in misses if v["drop_pt"] - _drop_se(r, v) <= r["tolerance_pt"]]
    lines += ["", "Met (int8 accuracy within the allowed drop of float): " + per_target +
              (f"; {failed} model(s) failed, see the rows" if failed else "") +
              (f"; no verdict for {', '.join(sorted(untrained))}: float accuracy below {UNTRAINED_BELOW_PCT:.0f} %, "
               "too little trained for its int8 drop to mean anything" if untrained else ""),
              "", "± s.e.: the standard error of the drop, an upper bound from the paired test (int8 and float on "
                  "the same images): 100·√(images on which they disagree)/images. Misses within one s.e. of the "
                  f"allowed drop: {len(noise)} of {len(misses)}" + (f" ({', '.join(noise)})" if noise else "") + "."]
    return "\n".join(lines) + "\n"


def _verdict(row: dict, cell: dict) -> str:
    if row["float_acc"] < UNTRAINED_BELOW_PCT:
        return "— (untrained)"
    return "yes" if cell["met"] else "no"


def _drop_se(row: dict, cell: dict) -> float:
    """Paired standard error (pt) of float − int8 accuracy: only images where the two disagree move it."""
    n = row["test_images"]
    return 100.0 * ((1.0 - cell["top1_agreement"]) * n) ** 0.5 / n


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Host: {meta['host']} · {meta['threads']} threads · load average at start {meta['loadavg']} · "
             f"{meta['rounds']} interleaved rounds · torch {meta['torch']}", "",
             "| model | target | variant | CPU ms | wall ms | ×float | size MB | ×float | TRANSPOSE | Q | DQ | PAD | "
             "partitions | top-1 agree | top-5 contain | out SQNR dB | top-1 agree, first crops |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for target, variants in r["targets"].items():
            if "error" in variants:
                lines.append(f"| {r['model']} | {target} | FAILED | {variants['error']} |" + " |" * 12)
                continue
            for kind, v in variants.items():
                ops = v.get("ops", {})
                part = v["partitions"] if not v.get("ops_outside_delegate") else \
                    f"{v['partitions']} (+{sum(v['ops_outside_delegate'].values())} ops outside)"
                fid = v["fidelity"]
                lines.append(
                    f"| {r['model']} | {target} | {kind} | {v['latency']['cpu_median_ms']:.2f} | {v['latency']['median_ms']:.2f} | "
                    f"{v.get('latency_ratio', 1.0):.2f} | {v['size_bytes'] / 1e6:.2f} | {v.get('size_ratio', 1.0):.3f} | "
                    f"{ops.get('TRANSPOSE', '–')} | {ops.get('QUANTIZE', '–')} | {ops.get('DEQUANTIZE', '–')} | "
                    f"{ops.get('PAD', '–')} | {part} | {fid['top1_agreement']:.3f} | {fid['top5_containment']:.3f} | "
                    f"{fid['output_sqnr_db']} | {_first_crops(v)} |")
    return "\n".join(lines) + "\n"


def _first_crops(v: dict) -> str:
    key = next((k for k in v if k.startswith("fidelity_first_")), None)
    return f"{v[key]['top1_agreement']:.3f} (first {key.rsplit('_', 1)[1]})" if key else "–"


FASHION_START, FASHION_END = "<!-- fashion:start -->", "<!-- fashion:end -->"
TABLE_START, TABLE_END = "<!-- table:start -->", "<!-- table:end -->"


def _between(text: str, a: str, b: str) -> str | None:
    return text.split(a, 1)[1].split(b, 1)[0].strip("\n") + "\n" if a in text and b in text else None


def write_docs(path: Path, *, main: str | None = None, fashion: str | None = None, command: str = "") -> None:
    """(Re)write the generated parts of the docs page: the latency/size/fidelity table of a normal run and the
    Fashion-MNIST table of a --fashion run. Each run replaces its own part; the hand-written text above the
    first table (how lwdeploy quantizes) and the other run's table are kept."""
    from lwdeploy.atomic import write_bytes

    old = path.read_text() if path.exists() else ""
    intro = old.split(TABLE_START, 1)[0].rstrip("\n") if TABLE_START in old else \
        "# int8 vs float (tables generated by benchmarks/int8_bench.py)"
    if main is None:
        main = _between(old, TABLE_START, TABLE_END) or ""
    else:
        main = (f"Generated by `{command}`.\n\n" if command else "") + main
    if fashion is None:
        fashion = _between(old, FASHION_START, FASHION_END)
    page = f"{intro}\n\n{TABLE_START}\n{main.rstrip()}\n{TABLE_END}\n"
    if fashion:
        page += ("\n## Fashion-MNIST: int8 accuracy vs float\n\n"
                 f"{FASHION_START}\n{fashion.rstrip()}\n{FASHION_END}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, page.encode())


def main(argv=None) -> int:
    import lwdeploy.models as zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="comma-separated zoo names (default: every zoo CNN)")
    p.add_argument("--targets", default="tflite,executorch")
    p.add_argument("--quick", action="store_true", help="fewer images and rounds (a smoke run, noisier numbers)")
    p.add_argument("--vendor-all", action="store_true", help="vendor reference for every model, not just MobileNetV2")
    p.add_argument("--pretrained", default="efficientnet_lite0",
                   help="comma-separated models to run with their real weights (where the zoo has them)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--threads", type=int, default=1,
                   help="runtime threads; 1 (default) makes CPU time a load-independent latency measure")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--subset", type=int, default=200,
                   help="also report fidelity on the first N held-out crops (the crops a --heldout N run uses)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--docs", type=Path, help="also write this markdown page (e.g. docs/int8.md)")
    p.add_argument("--keep-float-budget", type=float,
                   help="int8 variant keeps its worst layers in float within this MAC share (e.g. 0.05)")
    p.add_argument("--weight-rounding", choices=["early", "nearest", "adaround", "both"], default="early",
                   help="int8 variant's weight rounding: early (the default: learned for the first 3 layers, "
                        "nearest elsewhere), the quantizers' nearest, or learned everywhere (quantization/"
                        "adaround.py); both: an int8 (nearest) and an int8_adaround variant")
    p.add_argument("--recipes", help="int8 variants instead of --weight-rounding, comma-separated, each a weight "
                   "rounding (early, nearest, adaround), distill (early + distillation) or <rounding>+distill "
                   "(quantization/distill.py); the first is 'int8', the others 'int8_<recipe>'")
    p.add_argument("--distill-steps", type=int, default=40, help="steps for the recipes with distill")
    p.add_argument("--no-bias-correction", action="store_true", help="int8 variant without bias correction")
    p.add_argument("--simulated", action="store_true",
                   help="fidelity of the simulated int8 PT2E program only (no artifacts, no timing)")
    p.add_argument("--fashion", action="store_true",
                   help="Fashion-MNIST accuracy mode: train each model briefly, compare int8 artifacts' test accuracy")
    p.add_argument("--fashion-resolution", type=int, default=32)
    p.add_argument("--fashion-epochs", type=int, default=1)
    p.add_argument("--fashion-min-acc", type=float, default=75.0,
                   help="train one more epoch while accuracy on the train split's last 2000 images is below this %%")
    p.add_argument("--fashion-max-epochs", type=int, default=3, help="cap for --fashion-min-acc's extra epochs")
    p.add_argument("--fashion-train", type=int, default=20000, help="training images (first N of the train split)")
    p.add_argument("--fashion-test", type=int, default=10000, help="test images (first N of the test split)")
    p.add_argument("--from-json", type=Path, nargs="+", help="with --fashion: no run, the table of these earlier "
                                                              "runs' JSON files (rows in the order given; a "
                                                              "later file's row for a model replaces an earlier one)")
    p.add_argument("--describe", default="", help="with --fashion: a paragraph put above the table in --docs")
    p.add_argument("--keep-float-groups", help="with --fashion: comma-separated groups of module-path suffixes "
                                              "('|' within a group), e.g. '.weights,conv_height|conv_width'; one "
                                              "more int8 variant per group with those layers float")
    args = p.parse_args(argv)
    if args.fashion and not args.from_json and args.fashion_train > 60000 - FASHION_VAL_IMAGES:
        p.error(f"--fashion-train {args.fashion_train}: at most {60000 - FASHION_VAL_IMAGES}; the train split's last "
                f"{FASHION_VAL_IMAGES} images decide --fashion-min-acc")
    from lwdeploy.quantization.pt2e import WEIGHT_ROUNDINGS

    global KEEP_FLOAT_BUDGET, RECIPES, DISTILL_STEPS, BIAS_CORRECTION
    KEEP_FLOAT_BUDGET = args.keep_float_budget
    RECIPES = (args.recipes.split(",") if args.recipes else
               ["nearest", "adaround"] if args.weight_rounding == "both" else [args.weight_rounding])
    for recipe in RECIPES:
        parts = recipe.split("+")
        if not recipe or not set(parts) <= {*WEIGHT_ROUNDINGS, "distill"} or \
                sum(r in parts for r in WEIGHT_ROUNDINGS) > 1:
            p.error(f"--recipes: unknown recipe {recipe!r}; each is early, nearest, adaround, distill or "
                    "<rounding>+distill")
    DISTILL_STEPS, BIAS_CORRECTION = args.distill_steps, not args.no_bias_correction
    if args.quick:
        args.calib, args.heldout, args.rounds = min(args.calib, 16), min(args.heldout, 32), min(args.rounds, 30)
    # CNNs only: the ViT hybrids (MobileViT, EdgeViT) have attention the issue tracks separately
    names = args.models.split(",") if args.models else [n for n in zoo.list_models() if "vit" not in n]
    from lwdeploy.models.pretrained import has_pretrained

    args.pretrained = {n for n in (args.pretrained or "").split(",") if n and has_pretrained(n)}
    targets = [t for t in args.targets.split(",") if t]
    meta = {"host": platform.processor() or platform.machine(), "threads": args.threads, "rounds": args.rounds,
            "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "torch": torch.__version__,
            "quick": args.quick, "calibration_images": args.calib, "heldout_images": args.heldout,
            "keep_float_budget": args.keep_float_budget, "weight_rounding": args.weight_rounding, "recipes": RECIPES,
            "distill_steps": DISTILL_STEPS,
            "bias_correction": not args.no_bias_correction, "simulated": args.simulated}
    torch.set_num_threads(args.threads)
    from rich.console import Console

    console = Console(stderr=True)
    rows = []
    if args.fashion and args.from_json:  # the table of earlier --fashion runs (e.g. model lists split over processes)
        import json

        by_model: dict[str, dict] = {}  # a later file's row for a model replaces the earlier one, in its place
        for f in args.from_json:
            by_model.update({r["model"]: r for r in json.loads(f.read_text())["rows"]})
        rows = list(by_model.values())
        table = fashion_tables(rows, args.describe)
        if args.docs:
            write_docs(args.docs, fashion=table)
        print(table)
        return 0
    bench = bench_fashion if args.fashion else bench_model
    with tempfile.TemporaryDirectory() as d, console.status("starting") as status:
        for name in names:
            say = lambda m: (status.update(m), console.log(m))  # noqa: E731
            try:
                rows.append(bench(name, targets, args, Path(d), say))
            except Exception as e:  # noqa: BLE001
                if not args.fashion:
                    raise
                # --fashion: a model that cannot be trained or exported is a row of the table, not the end of the run
                rows.append({"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
                say(f"{name}: FAILED — {rows[-1]['error']}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from lwdeploy.atomic import write_json

    kind = "int8_fashion" if args.fashion else "int8"
    write_json(args.out / f"{kind}_{stamp}.json", {"meta": meta, "rows": rows})
    if args.fashion:
        table = fashion_tables(rows, args.describe)
        (args.out / f"{kind}_{stamp}.md").write_text(table)
        if args.docs:
            write_docs(args.docs, fashion=table)
        print(table)
        return 0
    table = simulated_markdown(rows) if args.simulated else markdown(rows, meta)
    (args.out / f"int8_{stamp}.md").write_text(table)
    if args.docs and not args.simulated:        # the docs table is the artifacts' one
        write_docs(args.docs, main=table, command=" ".join(["python benchmarks/int8_bench.py", *sys.argv[1:]]))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
