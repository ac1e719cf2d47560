"""Pruning benchmark: does structured pruning make the int8 model faster, and does recovery win back accuracy?

One command (both stages, then the table):
    python benchmarks/prune_bench.py                          # the issue's grid
    python benchmarks/prune_bench.py --stage accuracy --device cuda --models ghostnet_100   # one stage/model
    python benchmarks/prune_bench.py --stage report           # merge what the stages wrote into the table

Accuracy stage (per model, Fashion-MNIST at --resolution): train the unpruned net from scratch (cached:
results/ckpt/<model>_r<R>_n<N>_e<E>.pt, reruns reuse it), then per ratio prune (L1 magnitude, channel
counts rounded to 8), measure accuracy as pruned, after BatchNorm re-estimation on --bn-samples training
images, and after recovery (--finetune-epochs of knowledge distillation from the unpruned model, starting
from the BN-re-estimated net). Results: results/prune_acc/<model>.json.

Latency stage (per model, host CPU): the same pruned architectures (channel counts depend only on the ratio
and the graph, not on the weights) converted to int8 TFLite (LiteRT + XNNPACK) and int8 ExecuTorch (XNNPACK)
by the project's converters at --latency-resolution, then timed interleaved (unpruned and every ratio in
turn, round after round) with ONE runtime thread, measuring the calling thread's CPU time — the measure
that does not move when other processes share the cores (benchmarks/int8_bench.py). Results:
results/prune_lat/<model>.json.

Report: results/prune_bench.{json,md} from whatever the two stages have written (gitignored; the
generated table is copied into docs/pruning.md).

Why the stages are separate: training these nets from scratch to a sensible Fashion-MNIST accuracy takes
~200–900 s per 10k images per model on the 2-core CPU box (measured at 32 px), so the accuracy stage runs
where a GPU is (--device cuda; models in parallel processes), while latency must be measured on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "mobilenet_v3_small_100", "ghostnet_100",
                  "shufflenet_v2_100", "efficientnet_lite0")
DEFAULT_RATIOS = (0.25, 0.3, 0.5)
TARGETS = ("tflite", "executorch")
SPEEDUP_TARGET, ACC_GAP_TARGET = 1.3, 1.0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("all", "accuracy", "latency", "report"), default="all")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--ratios", nargs="+", type=float, default=list(DEFAULT_RATIOS))
    ap.add_argument("--device", default="auto", help="accuracy stage: cpu, cuda or auto (cuda when available)")
    ap.add_argument("--resolution", type=int, default=32, help="training/eval input size (Fashion-MNIST is 28 px)")
    ap.add_argument("--train-samples", type=int, default=None, help="first N training images (default: all 60000)")
    ap.add_argument("--eval-samples", type=int, default=10000, help="first N test images (default: all 10000)")
    ap.add_argument("--epochs", type=int, default=15, help="baseline training epochs (from scratch)")
    ap.add_argument("--finetune-epochs", type=int, default=5, help="recovery epochs (KD from the unpruned model)")
    ap.add_argument("--lr", type=float, default=3e-3, help="baseline AdamW peak learning rate (cosine)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3, help="recovery AdamW peak learning rate (cosine)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--bn-samples", type=int, default=2048, help="training images for BatchNorm re-estimation")
    ap.add_argument("--latency-ratios", nargs="+", type=float, help="ratios converted and timed (default: all "
                    "--ratios; params/MACs are reported for every ratio either way)")
    ap.add_argument("--latency-resolution", type=int, default=224, help="input size of the timed int8 artifacts")
    ap.add_argument("--calib", type=int, default=32, help="calibration images for int8 (Fashion-MNIST train)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed invokes per artifact (TFLite int8 is slow "
                    "for its first ~30)")
    ap.add_argument("--rounds", type=int, default=100, help="timed invokes per artifact, interleaved")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2000 train / 500 eval images, 1+1 epochs, "
                    "16 px artifacts, 10 rounds — numbers mean nothing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--docs", type=Path, help="also replace the generated table in this markdown page "
                    "(between the prune_bench markers), e.g. docs/pruning.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples = args.train_samples or 2000, min(args.eval_samples, 500)
        args.epochs, args.finetune_epochs, args.bn_samples = 1, 1, min(args.bn_samples, 256)
        args.latency_resolution, args.rounds, args.warmup, args.calib = 32, 10, 5, 4
    return args


def _device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def main(argv=None) -> int:
    from rich.console import Console

    from lwdeploy.models import list_models
    from lwdeploy.quantization import pruning

    args = parse_args(argv)
    console = Console(stderr=True)
    zoo = set(list_models())
    unknown = [m for m in args.models if m not in zoo]
    if unknown:
        console.print(f"[red]not in the zoo: {', '.join(unknown)}[/]")
        return 2
    for r in args.ratios:
        pruning.check_ratio(r)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "accuracy"):
        from lwdeploy.quantization.datasets import FASHION_MNIST_INSTALL, fashion_mnist_dir

        if fashion_mnist_dir() is None:
            console.print(f"[red]Fashion-MNIST is not installed[/]: {FASHION_MNIST_INSTALL}")
            return 2
        for name in args.models:
            accuracy_stage(name, args, console)
    if args.stage in ("all", "latency"):
        for name in args.models:
            latency_stage(name, args, console)
    report = merge(args)
    _write(report, args.out)
    if args.docs:
        replace_generated(args.docs, keep_other_models(args.docs, markdown(report), _measured(report)))
    console.print(f"[green]wrote[/] {args.out / 'prune_bench.json'} and {args.out / 'prune_bench.md'}")
    print(markdown(report))
    return 0


# ------------------------------------------------------------------------------------------- accuracy

def _baseline_path(name: str, args) -> Path:
    return args.out / "ckpt" / f"{name}_r{args.resolution}_n{args.train_samples or 'all'}_e{args.epochs}.pt"


def accuracy_stage(name: str, args, console) -> dict:
    from lwdeploy.models import count_macs, count_params, create, get_info
    from lwdeploy.quantization import pruning
    from lwdeploy.quantization.datasets import FashionMNIST
    from lwdeploy.quantization.finetune import TrainConfig, evaluate, train

    dev = _device(args.device)
    info = get_info(name)
    train_set = FashionMNIST(True, args.resolution, info.mean, info.std, limit=args.train_samples)
    eval_set = FashionMNIST(False, args.resolution, info.mean, info.std, limit=args.eval_samples)
    out = {"model": name, "device": dev, "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
           "torch": torch.__version__, "train": train_set.source, "eval": eval_set.source,
           "settings": {k: getattr(args, k) for k in ("resolution", "train_samples", "eval_samples", "epochs",
                                                       "finetune_epochs", "lr", "finetune_lr", "batch_size",
                                                       "bn_samples", "seed")},
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "ratios": {}}
    out["ratios"] = _earlier_ratios(args.out / "prune_acc" / f"{name}.json", out["settings"], args.ratios)
    base_ck = _baseline_path(name, args)
    torch.manual_seed(args.seed)
    if base_ck.is_file():
        base, meta = pruning.load_checkpoint(base_ck)
        out["baseline_train_seconds"] = (meta.get("extra") or {}).get("train_seconds")
        console.log(f"{name}: unpruned baseline from cache {base_ck.name}")
    else:
        base = create(name, num_classes=10)
        console.log(f"{name}: training the unpruned baseline ({args.epochs} epochs on {dev})")
        r = train(base, train_set, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                               seed=args.seed), device=dev, augment=True, console=console)
        out["baseline_train_seconds"] = round(r.seconds, 1)
        pruning.save_checkpoint(base.cpu(), base_ck, model_name=name, overrides={"num_classes": 10},
                                resolution=args.resolution, extra={"train_seconds": r.seconds,
                                                                   "history": r.history})
    out["acc_unpruned"] = evaluate(base, eval_set, device=dev)
    out["params_unpruned"] = count_params(base)
    console.log(f"{name}: unpruned {out['acc_unpruned']:.2f}%")
    _write_part(args.out / "prune_acc" / f"{name}.json", out)
    g = torch.Generator().manual_seed(args.seed)
    bn_idx = torch.randperm(len(train_set), generator=g)[:args.bn_samples]
    grey, _ = train_set.as_tensors("cpu")
    bn_images = train_set.normalise(grey[bn_idx])
    for ratio in args.ratios:
        example = torch.zeros(1, 3, args.resolution, args.resolution)
        base.cpu().eval()
        try:
            pruned = pruning.prune(base, ratio, example)
        except Exception as e:  # a model that cannot be pruned is a result, said in one line
            out["ratios"][f"{ratio:g}"] = {"error": str(e)}
            continue
        pruned.requires_grad_(True)
        row = {"params": count_params(pruned), "macs": count_macs(pruned, args.resolution),
               "check": pruned.lwdeploy_pruning["check"]}
        row["acc_pruned"] = evaluate(pruned, eval_set, device=dev)
        pruning.reestimate_batchnorm(pruned, bn_images.split(256), device=dev)
        row["acc_pruned_bn"] = evaluate(pruned, eval_set, device=dev)
        console.log(f"{name} @ {ratio:g}: pruned {row['acc_pruned']:.2f}%, BN re-estimated "
                    f"{row['acc_pruned_bn']:.2f}%; recovery ({args.finetune_epochs} epochs KD)")
        teacher = base.to(dev)
        r = train(pruned, train_set, TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr,
                                                 batch_size=args.batch_size, seed=args.seed),
                  teacher=teacher, device=dev, augment=True, console=console)
        row["recovery_seconds"] = round(r.seconds, 1)
        row["finetune_epochs"], row["finetune_lr"] = args.finetune_epochs, args.finetune_lr
        row["trained_on"] = out["gpu"] or dev  # rows of one file may come from different runs and machines
        row["acc_recovered"] = evaluate(pruned, eval_set, device=dev)
        console.log(f"{name} @ {ratio:g}: recovered {row['acc_recovered']:.2f}% (unpruned {out['acc_unpruned']:.2f}%)")
        pruned.cpu()
        pruning.save_checkpoint(pruned, base_ck.with_name(f"{base_ck.stem}_p{ratio:g}_ft{args.finetune_epochs}.pt"),
                                model_name=name, overrides={"num_classes": 10}, resolution=args.resolution,
                                extra={"acc_recovered": row["acc_recovered"]})
        out["ratios"][f"{ratio:g}"] = row
        _write_part(args.out / "prune_acc" / f"{name}.json", out)
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_part(args.out / "prune_acc" / f"{name}.json", out)
    return out


BASELINE_SETTINGS = ("resolution", "train_samples", "eval_samples", "epochs", "lr", "batch_size", "bn_samples", "seed")


def _earlier_ratios(path: Path, settings: dict, rerun) -> dict:
    """Rows of ratios not rerun now, from an earlier run on the same baseline (so one ratio can get a longer
    recovery without retraining the others); each row carries its own recovery epochs and lr."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if any(old["settings"].get(k) != settings[k] for k in BASELINE_SETTINGS):
        return {}
    keep = {k: v for k, v in old.get("ratios", {}).items() if float(k) not in rerun}
    for row in keep.values():  # rows written before rows carried their settings
        row.setdefault("finetune_epochs", old["settings"]["finetune_epochs"])
        row.setdefault("finetune_lr", old["settings"]["finetune_lr"])
        row.setdefault("trained_on", old.get("gpu") or old.get("device"))
    return keep


# -------------------------------------------------------------------------------------------- latency

def latency_stage(name: str, args, console) -> dict:
    """int8 TFLite and ExecuTorch artifacts of the unpruned net and every ratio; CPU time, one thread."""
    import tempfile

    sys.path.insert(0, str(HERE))
    from int8_bench import _executorch_invoker, _tflite_invoker, tflite_op_counts, tflite_partitions, \
        time_interleaved

    from lwdeploy.converters import get_converter
    from lwdeploy.converters.base import ExportRequest
    from lwdeploy.models import count_macs, count_params, create, get_info
    from lwdeploy.pipeline import lower_for
    from lwdeploy.quantization import pruning
    from lwdeploy.quantization.datasets import FashionMNIST, fashion_mnist_dir

    torch.set_num_threads(1)
    info = get_info(name)
    res = args.latency_resolution
    base_ck = _baseline_path(name, args)
    torch.manual_seed(args.seed)
    if base_ck.is_file():  # the trained weights: the artifacts are the real models (channel counts match)
        base, _ = pruning.load_checkpoint(base_ck)
        weights = f"trained ({base_ck.name})"
    else:  # same shapes either way; BN statistics from images so int8 ranges are those of a working net
        base = create(name, num_classes=10).eval()
        weights = "random init, BatchNorm statistics re-estimated on the calibration images"
    if fashion_mnist_dir() is not None:
        ds = FashionMNIST(True, res, info.mean, info.std, limit=512)
        calib = [ds[(i * 37) % len(ds)][0].unsqueeze(0) for i in range(args.calib)]
    else:
        from lwdeploy.quantization.calibration import real_photos

        calib = list(real_photos(res, info.mean, info.std, args.calib, 1, args.seed).calib.split(1))
    # every variant's BN statistics from the calibration images at this resolution (the trained nets saw
    # 32 px): int8 ranges are then those of a working net, and all variants are treated alike
    pruning.reestimate_batchnorm(base, torch.cat(calib))
    variants = {"unpruned": base}
    out = {"model": name, "resolution": res, "weights": weights, "threads": 1, "warmup": args.warmup,
           "rounds": args.rounds, "loadavg_start": os.getloadavg()[0], "variants": {}}
    example = torch.zeros(1, 3, 64, 64)
    for ratio in args.ratios:
        try:
            p = pruning.prune(base, ratio, example)
            pruning.reestimate_batchnorm(p, torch.cat(calib))
            variants[f"{ratio:g}"] = p
        except Exception as e:
            out["variants"][f"{ratio:g}"] = {"error": str(e)}
    for key, m in variants.items():
        out["variants"].setdefault(key, {}).update(params=count_params(m), macs=count_macs(m, res))
    timed_keys = {"unpruned"} | {f"{r:g}" for r in (args.latency_ratios or args.ratios)}
    variants = {k: m for k, m in variants.items() if k in timed_keys}
    x = calib[0].clone()
    with tempfile.TemporaryDirectory() as d:
        for target in TARGETS:
            conv = get_converter(target)
            runners = {}
            for key, m in variants.items():
                cell = out["variants"][key].setdefault(target, {})
                path = Path(d) / f"{name}_{key}_int8{conv.suffix}"
                t0 = time.perf_counter()
                try:
                    console.log(f"{name} {key}: {target} int8 @ {res} px")
                    req = ExportRequest(lower_for(m.eval(), target, True, x), x, info, path, int8=True,
                                        calib=calib)
                    result = conv.convert(req)
                    cell["convert_s"] = round(time.perf_counter() - t0, 1)
                    cell["size_bytes"] = result.path.stat().st_size
                    if target == "tflite":
                        ops = tflite_op_counts(result.path)
                        cell.update(partitions=tflite_partitions(result.path, 1),
                                    transpose=ops.get("TRANSPOSE", 0), quantize=ops.get("QUANTIZE", 0),
                                    dequantize=ops.get("DEQUANTIZE", 0))
                        runners[key] = _tflite_invoker(result.path, 1, x)
                    else:
                        runners[key] = _executorch_invoker(result.path, x, 1)
                    runners[key]()  # one invoke before timing: a runtime abort shows up here, per artifact
                except Exception as e:  # a failed conversion is a result to report, not a crash of the grid
                    cell["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    console.print(f"[red]{name} {key} {target}: {cell['error']}[/]")
            if runners:
                console.log(f"{name}: timing {target} ({len(runners)} artifacts interleaved, 1 thread)")
                timed = time_interleaved(runners, args.warmup, args.rounds)
                for key, t in timed.items():
                    out["variants"][key][target].update(cpu_ms=t["cpu_median_ms"], wall_ms=t["median_ms"])
            _write_part(args.out / "prune_lat" / f"{name}.json", out)
    base_ms = {t: out["variants"]["unpruned"].get(t, {}).get("cpu_ms") for t in TARGETS}
    for key, v in out["variants"].items():
        for t in TARGETS:
            ms = v.get(t, {}).get("cpu_ms")
            if ms and base_ms[t]:
                v[t]["speedup"] = round(base_ms[t] / ms, 3)
    out["loadavg_end"] = os.getloadavg()[0]
    _write_part(args.out / "prune_lat" / f"{name}.json", out)
    return out


# --------------------------------------------------------------------------------------------- report

def _write_part(path: Path, obj: dict) -> None:
    from lwdeploy.atomic import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


def merge(args) -> dict:
    report = {"host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "torch": torch.__version__},
              "written": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for name in args.models:
        acc = args.out / "prune_acc" / f"{name}.json"
        lat = args.out / "prune_lat" / f"{name}.json"
        report["models"][name] = {"accuracy": json.loads(acc.read_text()) if acc.is_file() else None,
                                  "latency": json.loads(lat.read_text()) if lat.is_file() else None}
    return report


def _write(report: dict, out: Path) -> None:
    from lwdeploy.atomic import write_bytes, write_json

    write_json(out / "prune_bench.json", report)
    write_bytes(out / "prune_bench.md", markdown(report).encode())


def _f(v, spec=".2f", suffix=""):
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def markdown(report: dict) -> str:
    accs = [m["accuracy"] for m in report["models"].values() if m["accuracy"]]
    lats = [m["latency"] for m in report["models"].values() if m["latency"]]
    lines = ["| model | ratio | params (M) | MACs (M) @ lat. res | TFLite int8 ms | ET int8 ms | speed-up TFLite / ET "
             "| acc unpruned | acc pruned | + BN re-est. | KD epochs, lr | recovered (KD) | gap |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for name, m in report["models"].items():
        acc, lat = m["accuracy"] or {}, m["latency"] or {}
        keys = ["unpruned"] + [k for k in (lat.get("variants") or {}) if k != "unpruned"]
        for k in (acc.get("ratios") or {}):
            if k not in keys:
                keys.append(k)
        keys = ["unpruned"] + sorted(keys[1:], key=float)
        for key in keys:
            v = (lat.get("variants") or {}).get(key, {})
            a = (acc.get("ratios") or {}).get(key, {}) if key != "unpruned" else {}
            err = v.get("error") or a.get("error")
            if err:
                lines.append(f"| {name} | {key} | cannot prune: {err} ||||||||||| ")
                continue
            params = v.get("params") or (acc.get("params_unpruned") if key == "unpruned" else a.get("params"))
            cells = {t: dict(v.get(t, {})) for t in TARGETS}
            for t in TARGETS:  # a stage still running has not written speed-ups yet: derive them here
                base_ms = ((lat.get("variants") or {}).get("unpruned", {}).get(t) or {}).get("cpu_ms")
                if "speedup" not in cells[t] and cells[t].get("cpu_ms") and base_ms:
                    cells[t]["speedup"] = round(base_ms / cells[t]["cpu_ms"], 3)
            ms = [(_f(c.get("cpu_ms"), ".2f") if "error" not in c else "failed") for c in cells.values()]
            sp = " / ".join(_f(c.get("speedup"), ".2f", "×") for c in cells.values()) if key != "unpruned" else "1×"
            u = acc.get("acc_unpruned")
            rec = a.get("acc_recovered")
            gap = (u - rec) if isinstance(u, float) and isinstance(rec, float) else None
            lines.append("| " + " | ".join([
                name, key, _f(params / 1e6 if params else None), _f(v.get("macs", 0) / 1e6 if v.get("macs") else None,
                                                                      ".1f"),
                *ms, sp, _f(u, ".2f", "%"),
                _f(a.get("acc_pruned"), ".2f", "%") if key != "unpruned" else "—",
                _f(a.get("acc_pruned_bn"), ".2f", "%") if key != "unpruned" else "—",
                f"{a.get('finetune_epochs', (acc.get('settings') or {}).get('finetune_epochs'))}, "
                f"{a.get('finetune_lr', (acc.get('settings') or {}).get('finetune_lr')):g}"
                if key != "unpruned" and rec is not None else "—",
                _f(rec, ".2f", "%") if key != "unpruned" else "—",
                _f(gap, "+.2f", " pt") if key != "unpruned" else "—"]) + " |")
            if key == "0.3":
                part = [f"{t} {cells[t]['speedup']:.2f}× ({'hit' if cells[t]['speedup'] >= SPEEDUP_TARGET else 'MISS'})"
                        for t in TARGETS if isinstance(cells[t].get("speedup"), float)]
                if gap is not None:
                    part.append(f"accuracy {gap:+.2f} pt vs unpruned ({'hit' if gap <= ACC_GAP_TARGET else 'MISS'})")
                verdicts.append(f"- {name} @ 0.3: " + (", ".join(part) or "not measured"))
    head = []
    if accs:
        s = accs[0]["settings"]
        dev = " and ".join(sorted({r.get("trained_on") or a.get("gpu") or a.get("device")
                                   for a in accs for r in [a, *a.get("ratios", {}).values()]} - {None}))
        head.append(f"Accuracy: Fashion-MNIST at {s['resolution']}×{s['resolution']} px (28 px grey upsampled, 3 "
                    f"channels), top-1 on {accs[0]['eval'].split(' (')[1].split(' images')[0]} test images. Unpruned "
                    f"net trained from scratch: {s['train_samples'] or 60000} images × {s['epochs']} epochs, AdamW "
                    f"lr {s['lr']:g} cosine, batch {s['batch_size']}, flip + shift augmentation. Pruned: L1 "
                    f"magnitude, channel counts rounded to multiples of 8. BN re-est.: running statistics "
                    f"recomputed on {s['bn_samples']} training images, no weight changes. Recovery: "
                    f"knowledge distillation from the unpruned net for the epochs and AdamW peak lr (cosine) of the "
                    f"row's \"KD epochs, lr\" column (α 0.7, T 4), starting from the BN-re-estimated net. Trained on {dev} "
                    f"(torch {accs[0]['torch']}); gap = unpruned − recovered.")
    if lats:
        l0 = lats[0]
        head.append(f"Latency: int8 artifacts from the project's converters at {l0['resolution']}×"
                    f"{l0['resolution']} px, host {report['host']['processor']} ({report['host']['cpus']} cores, "
                    f"shared), one runtime thread, CPU time of the calling thread, median of {l0['rounds']} "
                    f"invokes after {l0['warmup']} warm-up, all variants of a model interleaved round by round; "
                    f"weights: {l0['weights'].split(' (')[0]}. Speed-up = unpruned ÷ pruned CPU time.")
    return "\n\n".join(head + ["\n".join(lines), f"Targets (issue #5): ratio 0.3 → ≥ {SPEEDUP_TARGET}× int8 "
                                                 f"speed-up, recovered accuracy within {ACC_GAP_TARGET:g} pt.",
                               "\n".join(verdicts)]) + "\n"


def _measured(report: dict) -> list[str]:
    return [n for n, m in report["models"].items() if m["accuracy"] or m["latency"]]


def keep_other_models(page: Path, block: str, measured: list[str]) -> str:
    """`block` plus the page's rows and verdicts of models this run did not measure, in the page's order.

    Why: results/ is not in git, so a later session that re-runs one model (say on a lent GPU) no longer
    has the other models' JSON; their rows stay as the page had them. The "Trained on" list becomes the
    union of both, since the table then mixes rows from both runs.
    """
    import re

    text = page.read_text() if page.exists() else ""
    if BEGIN not in text or END not in text:
        return block
    old = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n")

    def split(b: str):
        rows, verdicts, head = {}, {}, []
        for line in b.splitlines():
            if line.startswith("| ") and not line.startswith("| model |"):
                rows.setdefault(line.split("|")[1].strip(), []).append(line)
            elif line.startswith("- ") and " @ " in line:
                verdicts.setdefault(line[2:].split(" @ ")[0], []).append(line)
            elif line.startswith(("Accuracy:", "Latency:")):
                head.append(line)
        return rows, verdicts, head

    old_rows, old_verdicts, old_head = split(old)
    new_rows, new_verdicts, _ = split(block)
    order = list(old_rows) + [m for m in new_rows if m not in old_rows]
    rows = [r for m in order for r in (new_rows.get(m, []) if m in measured else old_rows.get(m, []))]
    verdicts = [v for m in order for v in (new_verdicts.get(m, []) if m in measured else old_verdicts.get(m, []))]
    trained = re.compile(r"Trained on (.*?) \(torch (.*?)\)")
    was = next((trained.search(h) for h in old_head if trained.search(h)), None)
    out = []
    for line in block.splitlines():
        now = trained.search(line)
        if now and was:
            devices = sorted(set(was.group(1).split(" and ")) | set(now.group(1).split(" and ")))
            torches = " / ".join(dict.fromkeys(was.group(2).split(" / ") + now.group(2).split(" / ")))
            line = line.replace(now.group(0), f"Trained on {' and '.join(devices)} (torch {torches})")
        if line.startswith("| ") and not line.startswith("| model |"):
            continue
        if line.startswith("|---"):
            out += [line] + rows
            continue
        if line.startswith("- ") and " @ " in line:
            continue
        out.append(line)
    if verdicts:
        while out and not out[-1].strip():
            out.pop()
        out += [""] + verdicts
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- prune_bench:begin (generated by benchmarks/prune_bench.py --docs) -->", "<!-- prune_bench:end -->"


def replace_generated(page: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between `begin` and `end` in a markdown page (appended, or the page created, if absent)."""
    from lwdeploy.atomic import write_bytes

    text = page.read_text() if page.exists() else ""
    block = f"{begin}\n{table}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    write_bytes(page, text.encode())


if __name__ == "__main__":
    sys.exit(main())
