"""`lwdeploy export MODEL --target …` — the main job."""

from __future__ import annotations

import json
import sys
import time

import click

from lwdeploy.converters import TARGETS


def target_options(func):
    """One CLI option per key in the TARGETS table (a bool becomes --key/--no-key), so a target that learns
    a new option shows up here and in --help without touching this file."""
    seen: dict[str, tuple] = {}
    for t in TARGETS.values():
        for opt in t.options:
            prev = seen.get(opt.key)
            seen[opt.key] = (opt, (prev[1] if prev else []) + [t.name])
    for key, (opt, names) in reversed(list(seen.items())):
        flag = "--" + key.replace("_", "-")
        help_text = f"[{', '.join(names)}] {opt.help}"
        if opt.type is bool:
            func = click.option(f"{flag}/--no-{key.replace('_', '-')}", key, default=None, help=help_text)(func)
        else:
            func = click.option(flag, key, type=click.Choice(opt.choices) if opt.choices else opt.type,
                                default=None, help=f"{help_text} (default {opt.default})")(func)
    return func


@click.command()
@click.argument("model")
@click.option("--target", "-t", "targets", multiple=True, default=("tflite",), show_default=True,
              help="tflite | coreml | executorch | all (repeatable).")
@click.option("--int8", is_flag=True, help="Post-training static int8 (PT2E, per-channel weights, calibrated).")
@click.option("--out", "out_dir", default="lwdeploy-out", show_default=True, type=click.Path(),
              help="Output folder (created if missing).")
@click.option("--resolution", "-r", type=int, help="Input size (square); default: the model's paper resolution.")
@click.option("--width", "-w", type=float, help="Width multiplier (zoo models that have one).")
@click.option("--num-classes", type=int, help="Classifier size (e.g. 10 for a Fashion-MNIST checkpoint).")
@click.option("--weights", type=click.Path(), help="State-dict checkpoint (.pt/.pth), loaded with weights_only=True.")
@click.option("--pretrained", is_flag=True, help="Real ImageNet weights where the zoo has them (efficientnet_lite0).")
@click.option("--calib", type=click.Path(),
              help="Image folder, or 'fashion-mnist' (Debian dataset-fashion-mnist), for calibration; "
                   "default: real photos from scikit-image.")
@click.option("--calib-samples", default=64, show_default=True, help="Calibration crops.")
@click.option("--heldout-samples", default=64, show_default=True, help="Held-out crops for the fidelity check.")
@click.option("--prune", type=float, help="Structured channel pruning ratio in (0, 1) before export.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --prune: recovery epochs (knowledge distillation from the unpruned model) before export.")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="Recovery data for --finetune-epochs: fashion-mnist or an image folder (root/<class>/<images>).")
@click.option("--finetune-samples", type=int, metavar="N",
              help="Recovery on the first N training images only (CPU-friendly; default: all).")
@click.option("--seed", default=0, show_default=True, help="Seed for random init, crops and calibration order.")
@click.option("--keep-float", multiple=True, metavar="MODULE",
              help="With --int8: leave this PyTorch module path in float (repeatable), e.g. the layers the "
                   "fidelity report names as worst.")
@click.option("--keep-float-budget", type=float, metavar="FRACTION",
              help="With --int8: also keep the layers whose int8 noise hurts most (per-layer SQNR) in float, "
                   "up to this share of the model's MACs, e.g. 0.05.")
@click.option("--weight-rounding", type=click.Choice(["early", "nearest", "adaround"]),
              help="With --int8: how int8 weights are rounded. early (default): learned up/down rounding "
                   "(AdaRound) for the first 3 layers the image meets, nearest for the rest (~1 s); adaround: "
                   "learned for every layer (~80–100 CPU s more for EfficientNet-Lite0); nearest: the "
                   "quantizers' own.")
@click.option("--adaround", is_flag=True, help="With --int8: same as --weight-rounding adaround.")
@click.option("--distill", is_flag=True,
              help="With --int8: after calibration, fine-tune the int8 program's weights so its outputs match the "
                   "float model's on the calibration images (quantization-aware distillation; ~1 min for "
                   "EfficientNet-Lite0). Combines with --adaround.")
@click.option("--distill-steps", type=click.IntRange(1, 10000), metavar="N",
              help="With --distill: optimizer steps of 8 calibration images each (default 40).")
@click.option("--jobs", "-j", type=click.IntRange(1, 8), help="Targets converted at once in worker processes "
              "(default: one per target, up to the CPU count). Verification always runs one at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON on stdout.")
@target_options
def export(model, targets, int8, out_dir, resolution, width, num_classes, weights, pretrained, calib,
           calib_samples, heldout_samples, prune, finetune_epochs, dataset, finetune_samples, seed, keep_float, keep_float_budget, weight_rounding, adaround, distill, distill_steps, jobs, as_json,
           **target_opts):
    """Export MODEL (zoo name, file.py:Class, timm:NAME, torchvision:NAME) and verify it on the host.

    Writes each artifact with a manifest (<artifact>.json) beside it: sha256, size, I/O spec,
    preprocessing, quantization, fidelity vs PyTorch float, host latency, tool versions.
    """
    from rich.console import Console

    from lwdeploy.errors import LwdeployError
    from lwdeploy.pipeline import export as run_export

    if (keep_float or keep_float_budget is not None) and not int8:
        raise LwdeployError("--keep-float and --keep-float-budget choose layers to leave out of int8",
                            "add --int8, or drop them for a float export")
    if adaround and not int8:
        raise LwdeployError("--adaround chooses how int8 weights are rounded", "add --int8, or drop --adaround")
    if weight_rounding and not int8:
        raise LwdeployError("--weight-rounding chooses how int8 weights are rounded",
                            "add --int8, or drop --weight-rounding")
    if adaround and weight_rounding not in (None, "adaround"):
        raise LwdeployError(f"--adaround and --weight-rounding {weight_rounding} ask for different roundings",
                            "keep one of them")
    if adaround:
        weight_rounding = "adaround"
    if distill and not int8:
        raise LwdeployError("--distill fine-tunes an int8 program", "add --int8, or drop --distill")
    if distill_steps is not None and not distill:
        raise LwdeployError("--distill-steps sets how long --distill trains", "add --distill, or drop --distill-steps")
    if target_opts.get("float_for_speed") is not None and not int8:
        raise LwdeployError("--float-for-speed / --no-float-for-speed choose which layers ExecuTorch keeps out of int8",
                            "add --int8, or drop the option for a float export")
    if keep_float_budget is not None and not 0 < keep_float_budget < 1:
        raise LwdeployError(f"--keep-float-budget {keep_float_budget} is not a fraction in (0, 1)",
                            "e.g. 0.05 keeps float layers worth at most 5 % of the model's MACs")
    from lwdeploy.quiet import terminal_stream

    # the console writes to a duplicate of stderr: fd 2 itself is captured while converters run
    console = Console(file=terminal_stream(), width=None if sys.stderr.isatty() else 120)
    start = time.perf_counter()
    with console.status("starting", spinner="dots") as status:
        def progress(msg: str) -> None:
            console.log(msg)
            status.update(msg)

        manifests = run_export(model, targets, out_dir=out_dir, int8=int8, resolution=resolution, width=width,
                               num_classes=num_classes, weights=weights, pretrained=pretrained, calib=calib,
                               calib_samples=calib_samples, heldout_samples=heldout_samples, prune=prune,
                               seed=seed, progress=progress, jobs=jobs, finetune_epochs=finetune_epochs,
                               dataset=dataset, finetune_samples=finetune_samples,
                               options={**{k: v for k, v in target_opts.items() if v is not None},
                                        **({"keep_float": list(keep_float)} if keep_float else {}),
                                        **({"keep_float_budget": keep_float_budget} if keep_float_budget else {}),
                                        **({"weight_rounding": weight_rounding} if weight_rounding else {}),
                                        **({"distill_steps": distill_steps or 40} if distill else {})})
    console.print(summary_table(manifests))
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s — manifests beside each artifact")
    if as_json:
        click.echo(json.dumps(manifests if len(manifests) > 1 else manifests[0], indent=2, default=str))


def summary_table(manifests: list[dict]):
    from rich.table import Table

    table = Table(title="lwdeploy export", title_justify="left")
    for col in ("target", "artifact", "size", "precision", "top-1 agree", "max |Δ|", "host ms (p50)", "checked"):
        table.add_column(col, justify="right" if col in ("size", "top-1 agree", "max |Δ|", "host ms (p50)") else "left")
    for m in manifests:
        ver = m["verification"]
        fid = ver.get("fidelity") or {}
        lat = ver.get("latency_ms") or {}
        agree = fid.get("top1_agreement")
        table.add_row(
            m["artifact"]["target"], m["artifact"]["file"], _size(m["artifact"]["size_bytes"]),
            _precision(m),
            f"{agree:.1%}" if agree is not None else "—",
            f"{fid['max_abs_diff']:.3g}" if "max_abs_diff" in fid else "—",
            f"{lat['p50']:.2f}" if "p50" in lat else ("—" if not lat else f"{next(iter(lat.values())):.2f}"),
            "ran on host" if ver["ran_on_host"] else "structural only")
    return table


def _precision(m: dict) -> str:
    scheme = m["quantization"].get("scheme", "")
    if scheme.startswith("int8") or m.get("calibration"):
        return "int8"
    return "fp16" if "float16" in scheme else "fp32"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
