"""Pruning benchmark: does structured pruning make the int8 model faster, and does recovery win back accuracy?

One command:
    python benchmarks/prune_bench.py                    # the issue's set, full settings (slow on a laptop CPU)
    python benchmarks/prune_bench.py --quick            # small training budget, for a first look

For each model: train the unpruned net on Fashion-MNIST (28×28 grey → 3 channels, upsampled to --resolution),
then for each ratio: prune (L1), measure accuracy after pruning, fine-tune with knowledge distillation from the
unpruned model, measure accuracy again. Params and MACs are counted; host latency is *measured* on the int8
TFLite (LiteRT + XNNPACK) and int8 ExecuTorch (XNNPACK) artifacts, built with the project's converters at
--latency-resolution. Results: benchmarks/results/prune_bench.json and .md (git-ignored; copy the table into
docs when you want). Trained checkpoints are cached under benchmarks/results/ckpt/ so reruns skip training.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "mobilenet_v3_small_100", "ghostnet_100",
                  "shufflenet_v2_100", "efficientnet_lite0")
DEFAULT_RATIOS = (0.25, 0.3, 0.5)
TARGETS = ("tflite", "executorch")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--ratios", nargs="+", type=float, default=list(DEFAULT_RATIOS))
    ap.add_argument("--resolution", type=int, default=64, help="training/eval input size")
    ap.add_argument("--latency-resolution", type=int, default=224, help="input size of the timed int8 artifacts")
    ap.add_argument("--train-samples", type=int, default=None, help="first N Fashion-MNIST training images")
    ap.add_argument("--eval-samples", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="recovery epochs (KD)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--calib", type=int, default=32, help="calibration images for int8")
    ap.add_argument("--latency-repeats", type=int, default=3, help="verify() runs per artifact; the min p50 is kept")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--quick", action="store_true", help="--train-samples 4000 --eval-samples 1000 --epochs 2 "
                    "--resolution 32")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.train_samples = args.train_samples or 4000
        args.eval_samples = min(args.eval_samples, 1000)
        args.epochs = min(args.epochs, 2)
        args.resolution = 32 if args.resolution == 64 else args.resolution
    return args


def main(argv=None) -> int:
    from rich.console import Console

    from lwdeploy.errors import LwdeployError
    from lwdeploy.models import count_macs, count_params, create, get_info, list_models
    from lwdeploy.quantization import pruning
    from lwdeploy.quantization.datasets import FASHION_MNIST_INSTALL, FashionMNIST, fashion_mnist_dir
    from lwdeploy.quantization.finetune import TrainConfig, evaluate, train

    args = parse_args(argv)
    console = Console(stderr=True)
    zoo = set(list_models())
    models = [m for m in args.models if m in zoo]
    for m in set(args.models) - set(models):
        console.print(f"[yellow]skipping {m}: not in the zoo[/]")
    if not args.no_accuracy and fashion_mnist_dir() is None:
        console.print(f"[red]Fashion-MNIST is not installed[/]: {FASHION_MNIST_INSTALL} (or pass --no-accuracy)")
        return 2
    for r in args.ratios:
        pruning.check_ratio(r)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = args.out / "ckpt"
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for name in models:
        info = get_info(name)
        entry = report["models"][name] = {"variants": []}
        data = None
        if not args.no_accuracy:
            train_set = FashionMNIST(True, args.resolution, info.mean, info.std, limit=args.train_samples)
            eval_set = FashionMNIST(False, args.resolution, info.mean, info.std, limit=args.eval_samples)
            data = (train_set, eval_set)
            entry["data"] = {"train": train_set.source, "eval": eval_set.source}
        torch.manual_seed(0)
        base = create(name, num_classes=10)
        base_ck = ckpt_dir / f"{name}_r{args.resolution}_n{args.train_samples or 'all'}_e{args.epochs}.pt"
        if data is not None:
            if base_ck.is_file():
                base, _ = pruning.load_checkpoint(base_ck)
                console.log(f"{name}: baseline from cache {base_ck.name}")
            else:
                console.log(f"{name}: training the unpruned baseline ({args.epochs} epochs)")
                r = train(base, data[0], TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
                          console=console)
                pruning.save_checkpoint(base, base_ck, model_name=name, overrides={"num_classes": 10},
                                        resolution=args.resolution, extra={"train_seconds": r.seconds})
        base_row = _row(name, "unpruned", None, base, args, count_params, count_macs)
        if data is not None:
            base_row["acc_unpruned"] = base_row["acc_pruned"] = base_row["acc_recovered"] = evaluate(
                base, data[1], progress=True, console=console)
        base_art = {}
        if not args.no_latency:
            base_row["latency_ms"] = _latency(base, info, args, console, keep=base_art,
                                              art_dir=args.out / "artifacts" / name / "unpruned")
        entry["variants"].append(base_row)
        _write(report, args.out)
        for ratio in args.ratios:
            example = torch.zeros(1, 3, args.resolution, args.resolution)
            try:
                pruned = pruning.prune(base, ratio, example)
            except LwdeployError as e:
                entry["variants"].append({"model": name, "ratio": ratio, "error": str(e)})
                console.print(f"[yellow]{name} @ {ratio}: {e}[/]")
                continue
            row = _row(name, f"pruned {ratio:g}", ratio, pruned, args, count_params, count_macs)
            row["structure_check"] = pruned.lwdeploy_pruning["check"]
            if data is not None:
                row["acc_unpruned"] = base_row["acc_unpruned"]
                row["acc_pruned"] = evaluate(pruned, data[1], progress=True, console=console)
                ck = ckpt_dir / f"{base_ck.stem}_p{ratio:g}_ft{args.finetune_epochs}.pt"
                if ck.is_file():
                    pruned, _ = pruning.load_checkpoint(ck)
                else:
                    console.log(f"{name} @ {ratio:g}: recovery with KD ({args.finetune_epochs} epochs)")
                    train(pruned, data[0], TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr,
                                                       batch_size=args.batch_size), teacher=base, console=console)
                    pruning.save_checkpoint(pruned, ck, model_name=name, overrides={"num_classes": 10},
                                            resolution=args.resolution)
                row["acc_recovered"] = evaluate(pruned, data[1], progress=True, console=console)
            if not args.no_latency:
                # paired: the unpruned artifact is re-timed right beside the pruned one, alternately, so a
                # busy shared host slows both alike and the speed-up compares like with like
                row["latency_ms"] = _latency(pruned, info, args, console, paired=base_art,
                                             art_dir=args.out / "artifacts" / name / f"p{ratio:g}")
                for t in TARGETS:
                    ms, b = row["latency_ms"].get(t), row["latency_ms"].get(f"{t}_paired_unpruned")
                    if isinstance(ms, float) and isinstance(b, float) and ms > 0:
                        row.setdefault("speedup", {})[t] = round(b / ms, 3)
            entry["variants"].append(row)
            _write(report, args.out)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(report, args.out)
    console.print(f"[green]wrote[/] {args.out / 'prune_bench.json'} and {args.out / 'prune_bench.md'}")
    print((args.out / "prune_bench.md").read_text())
    return 0


def _row(name, variant, ratio, model, args, count_params, count_macs) -> dict:
    return {"model": name, "variant": variant, "ratio": ratio, "params": count_params(model),
            "macs_train_res": count_macs(model, args.resolution),
            "macs_latency_res": count_macs(model, args.latency_resolution)}


def _latency(model, info, args, console, *, art_dir: Path, keep: dict | None = None,
             paired: dict | None = None) -> dict:
    """Median host latency (ms) of int8 artifacts built by the project's converters; min over repeats.

    `keep` collects {target: (converter, path, inputs, reference)} for later pairing; with `paired`, each
    repeat times the paired (unpruned) artifact and then this one, and both minima are reported.
    """
    from lwdeploy.converters import get_converter
    from lwdeploy.converters.base import ExportRequest

    try:
        from lwdeploy.pipeline import lower_for
    except ImportError:  # pragma: no cover
        def lower_for(m, target):
            return m

    res = args.latency_resolution
    calib = [_calib_image(i, res, info) for i in range(args.calib)]
    inputs = torch.cat(calib[:8])
    out = {}
    for target in TARGETS:
        try:
            conv = get_converter(target)
            try:  # the pipeline's lowering takes int8 (newer) or not (older)
                lowered = lower_for(model.eval(), target, int8=True)
            except TypeError:
                lowered = lower_for(model.eval(), target)
            path = art_dir / f"model{conv.suffix}"
            req = ExportRequest(lowered, calib[0].clone(), info, path, int8=True, calib=calib)
            console.log(f"{target} int8 @ {res}px: converting")
            result = conv.convert(req)
            with torch.no_grad():
                ref = model(inputs)
            if keep is not None:
                keep[target] = (conv, result.path, inputs, ref)
            mine, theirs = [], []
            for _ in range(args.latency_repeats):
                if paired and target in paired:
                    pconv, ppath, pin, pref = paired[target]
                    theirs.append(float(pconv.verify(ppath, pin, pref).latency_ms["p50"]))
                ver = conv.verify(result.path, inputs, ref)
                mine.append(float(ver.latency_ms["p50"]))
            out[target] = round(min(mine), 3)
            out[f"{target}_all_p50"] = mine
            if theirs:
                out[f"{target}_paired_unpruned"] = round(min(theirs), 3)
                out[f"{target}_paired_unpruned_all_p50"] = theirs
            if ver.fidelity:
                out[f"{target}_top1_agreement"] = ver.fidelity.get("top1_agreement")
        except Exception as e:  # a converter failure is a result to report, not a crash of the whole run
            out[target] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            console.print(f"[red]{target}: {out[target]}[/]")
    return out


def _calib_image(i: int, res: int, info) -> torch.Tensor:
    """Fashion-MNIST training images (when installed) at the latency resolution; else real photos."""
    from lwdeploy.quantization.datasets import FashionMNIST, fashion_mnist_dir

    if fashion_mnist_dir() is not None:
        if not hasattr(_calib_image, "ds") or _calib_image.ds.resolution != res:
            _calib_image.ds = FashionMNIST(True, res, info.mean, info.std, limit=512)
        return _calib_image.ds[(i * 37) % len(_calib_image.ds)][0].unsqueeze(0)
    from lwdeploy.quantization import calibration

    imgs = calibration.real_photos(res, info.mean, info.std, n_calib=max(1, i + 1), n_heldout=1)
    return imgs.calib[i:i + 1]


def _write(report: dict, out: Path) -> None:
    from lwdeploy.atomic import write_bytes, write_json

    write_json(out / "prune_bench.json", report)
    write_bytes(out / "prune_bench.md", markdown(report).encode())


def _fmt(v, spec=".2f", suffix=""):
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) and v is not None else ("—" if v is None else str(v))


def _lat(lat: dict, t: str) -> str:
    paired = lat.get(f"{t}_paired_unpruned")
    return _fmt(lat.get(t), ".3f") + (f" ({paired:.3f})" if isinstance(paired, float) else "")


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Structured pruning benchmark",
        "",
        f"Host: {report['host']['processor']} ({report['host']['machine']}), torch {report['host']['torch']}, "
        f"{report['host']['torch_threads']} torch threads. Started {report['started']}.",
        f"Accuracy: Fashion-MNIST at {s['resolution']}×{s['resolution']} "
        f"(train: {s['train_samples'] or 'all 60000'} images × {s['epochs']} epochs; recovery: "
        f"{s['finetune_epochs']} epoch(s) with KD from the unpruned model; eval: first {s['eval_samples']} test "
        f"images). Latency: int8, {s['latency_resolution']}×{s['latency_resolution']} input, host CPU, "
        f"p50 of {s['latency_repeats']} verify() runs, best kept; speed-up = unpruned ÷ pruned, both timed "
        f"alternately in the same window (the unpruned time it used is in brackets).",
        "",
        "| model | variant | params (M) | MACs (M) @lat. res | TFLite int8 ms | ExecuTorch int8 ms | speed-up "
        "TFLite / ET | acc unpruned | acc pruned | acc recovered |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["models"].items():
        for r in entry["variants"]:
            if "error" in r:
                lines.append(f"| {name} | pruned {r['ratio']:g} | cannot prune: {r['error']} |||||||| ")
                continue
            lat = r.get("latency_ms") or {}
            sp = r.get("speedup") or {}
            speed = " / ".join(_fmt(sp.get(t), ".2f", "×") for t in TARGETS) if sp else "—"
            lines.append("| " + " | ".join([
                name, r["variant"], _fmt(r["params"] / 1e6), _fmt(r["macs_latency_res"] / 1e6, ".1f"),
                _lat(lat, "tflite"), _lat(lat, "executorch"), speed,
                _fmt(r.get("acc_unpruned"), ".2f", "%"), _fmt(r.get("acc_pruned"), ".2f", "%"),
                _fmt(r.get("acc_recovered"), ".2f", "%")]) + " |")
    lines += ["", "Targets (issue #5): ratio 0.3 → ≥ 1.3× measured host int8 speed-up; recovered accuracy within "
              "1 pt of the unpruned model.", ""]
    for name, entry in report["models"].items():
        rows = {r.get("ratio"): r for r in entry["variants"] if "error" not in r}
        r3, r0 = rows.get(0.3), rows.get(None)
        if not r3 or not r0:
            continue
        sp = r3.get("speedup") or {}
        acc_gap = (r0.get("acc_unpruned") - r3.get("acc_recovered")) if r3.get("acc_recovered") is not None \
            and r0.get("acc_unpruned") is not None else None
        verdict = []
        for t in TARGETS:
            if t in sp:
                verdict.append(f"{t} {sp[t]:.2f}× ({'hit' if sp[t] >= 1.3 else 'miss'})")
        if acc_gap is not None:
            verdict.append(f"accuracy gap {acc_gap:+.2f} pt ({'hit' if acc_gap <= 1.0 else 'miss'})")
        lines.append(f"- {name} @ 0.3: " + ", ".join(verdict or ["not measured"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
