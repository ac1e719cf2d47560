"""`lwdeploy prune MODEL --ratio R` — structured channel pruning (optionally with recovery fine-tuning)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("model")
@click.option("--ratio", "-p", type=float, required=True, help="Fraction of channels removed per layer group, in (0, 1).")
@click.option("--round-to", default=8, show_default=True, help="Kept channel counts are multiples of this (1: off).")
@click.option("--importance", default="l1", show_default=True, type=click.Choice(["l1", "l2", "bn", "random"]),
              help="Channel ranking: weight magnitude (l1/l2), BatchNorm scale, or random.")
@click.option("--resolution", "-r", type=int, default=64, show_default=True,
              help="Input size used to trace the graph (and for MACs / training).")
@click.option("--width", "-w", type=float, help="Width multiplier (zoo models that have one).")
@click.option("--num-classes", type=int, help="Classifier size (e.g. 10 for Fashion-MNIST).")
@click.option("--weights", type=click.Path(), help="Plain state dict for the unpruned zoo model.")
@click.option("--out", "-o", "out", type=click.Path(), help="Checkpoint to write (default <model>_p<ratio>.pt).")
@click.option("--finetune-epochs", default=0, show_default=True, help="Recovery epochs with KD from the unpruned model.")
@click.option("--data", default="fashion-mnist", show_default=True, help="fashion-mnist or an image folder root.")
@click.option("--train-samples", type=int, help="Use only the first N training images (quick runs).")
@click.option("--eval-samples", type=int, default=2000, show_default=True, help="Held-out images for accuracy.")
@click.option("--lr", default=1e-3, show_default=True, help="AdamW peak learning rate for recovery.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def prune(model, ratio, round_to, importance, resolution, width, num_classes, weights, out, finetune_epochs, data,
          train_samples, eval_samples, lr, batch_size, seed, as_json):
    """Remove channels from MODEL (zoo name or lwdeploy checkpoint) and save a checkpoint export can load."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from lwdeploy.errors import LwdeployError
    from lwdeploy.models import count_macs, count_params
    from lwdeploy.quantization import pruning

    console = Console(stderr=True)
    pruning.check_ratio(ratio)
    if not 16 <= resolution <= 1024:
        raise LwdeployError(f"resolution {resolution} is out of range", "use 16..1024, e.g. 64")
    if finetune_epochs < 0:
        raise LwdeployError(f"--finetune-epochs {finetune_epochs} must be ≥ 0", "e.g. --finetune-epochs 2")
    torch.manual_seed(seed)
    with console.status(f"building {model}"):
        net, meta = pruning.build_from_spec(model, num_classes=num_classes, width=width, weights=weights)
    if meta.get("pruning"):
        raise LwdeployError(f"{model} is already pruned", "prune the unpruned model once with the ratio you want")
    res = meta.get("resolution") or resolution
    example = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(seed))
    with console.status(f"pruning {ratio:.0%} of channels"):
        pruned = pruning.prune(net, ratio, example, round_to=round_to, importance=importance)
    summary = {"model": meta["model"], "overrides": meta["overrides"], "ratio": ratio, "round_to": round_to,
               "importance": importance, "resolution": res,
               "params": [count_params(net), count_params(pruned)], "macs": [count_macs(net, res),
                                                                            count_macs(pruned, res)],
               "check": pruned.lwdeploy_pruning["check"], "note": pruned.lwdeploy_pruning.get("note"),
               "trunk_widths": pruned.lwdeploy_pruning.get("trunk_widths")}
    extra = dict(meta.get("extra") or {})
    if finetune_epochs:
        summary["finetune"] = _recover(pruned, net, data, res, meta["model"], finetune_epochs, train_samples,
                                       eval_samples, lr, batch_size, seed, console)
        extra["finetune"] = summary["finetune"]
    path = out or f"{meta['model']}_p{ratio:g}.pt"
    pruning.save_checkpoint(pruned, path, model_name=meta["model"], overrides=meta["overrides"], resolution=res,
                            extra=extra)
    summary["checkpoint"] = str(path)
    table = Table(title=f"lwdeploy prune {meta['model']} --ratio {ratio:g}", title_justify="left")
    for col in ("", "before", "after", "kept"):
        table.add_column(col, justify="right")
    for key in ("params", "macs"):
        a, b = summary[key]
        table.add_row(key, f"{a / 1e6:.2f} M", f"{b / 1e6:.2f} M", f"{b / a:.0%}")
    console.print(table)
    console.print(f"structure check: {summary['check']}" + (f" — {summary['note']}" if summary["note"] else ""))
    if summary["trunk_widths"]:
        console.print("shuffled trunk: " + ", ".join(f"{k} {a}→{b}" for k, (a, b) in summary["trunk_widths"].items()))
    if finetune_epochs:
        f = summary["finetune"]
        console.print(f"accuracy on {f['eval_source']}: teacher {f['teacher_acc']:.2f}%  pruned {f['pruned_acc']:.2f}%"
                      f"  BN re-estimated {f['bn_reestimated_acc']:.2f}%  recovered {f['recovered_acc']:.2f}%")
    console.print(f"[green]wrote[/] {path}")
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))


def _recover(pruned, teacher, data, res, model_name, epochs, train_samples, eval_samples, lr, batch_size, seed,
             console) -> dict:
    from lwdeploy.models import get_info
    from lwdeploy.quantization.datasets import open_dataset
    from lwdeploy.quantization.finetune import TrainConfig, evaluate, train

    info = get_info(model_name)
    train_set = open_dataset(data, train=True, resolution=res, mean=info.mean, std=info.std, limit=train_samples)
    eval_set = open_dataset(data, train=False, resolution=res, mean=info.mean, std=info.std, limit=eval_samples)
    teacher_acc = evaluate(teacher, eval_set, progress=True, console=console)
    pruned_acc = evaluate(pruned, eval_set, progress=True, console=console)
    # fresh BatchNorm statistics first: removed channels shifted every downstream BN's input
    from torch.utils.data import DataLoader, Subset

    from lwdeploy.quantization.pruning import reestimate_batchnorm

    n_bn = min(len(train_set), 1024)
    reestimate_batchnorm(pruned, DataLoader(Subset(train_set, range(n_bn)), batch_size=128))
    bn_acc = evaluate(pruned, eval_set, progress=True, console=console)
    result = train(pruned, train_set, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed),
                   teacher=teacher, console=console)
    recovered = evaluate(pruned, eval_set, progress=True, console=console)
    return {"epochs": epochs, "train_source": train_set.source, "eval_source": eval_set.source,
            "teacher_acc": teacher_acc, "pruned_acc": pruned_acc, "bn_reestimated_acc": bn_acc,
            "bn_samples": n_bn, "recovered_acc": recovered,
            "seconds": round(result.seconds, 1), "history": result.history}
