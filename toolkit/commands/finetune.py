"""`lwdeploy finetune MODEL --data fashion-mnist` — train / recover a (pruned) model; writes a checkpoint."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("model")
@click.option("--data", default="fashion-mnist", show_default=True, help="fashion-mnist or an image folder root "
              "(root/<class>/<images>, or root/train + root/val).")
@click.option("--epochs", default=1, show_default=True)
@click.option("--teacher", type=click.Path(), help="Knowledge-distillation teacher: an lwdeploy checkpoint "
              "(e.g. the unpruned model) or a zoo name.")
@click.option("--resolution", "-r", type=int, help="Input size (default: the checkpoint's, else 64).")
@click.option("--width", "-w", type=float, help="Width multiplier (zoo models that have one).")
@click.option("--num-classes", type=int, help="Classifier size (default: the dataset's class count).")
@click.option("--weights", type=click.Path(), help="Plain state dict for a zoo MODEL.")
@click.option("--out", "-o", "out", type=click.Path(), help="Checkpoint to write (default <model>_ft.pt).")
@click.option("--train-samples", type=int, help="Use only the first N training images (quick runs).")
@click.option("--eval-samples", type=int, default=2000, show_default=True, help="Held-out images for accuracy.")
@click.option("--lr", default=2e-3, show_default=True, help="AdamW peak learning rate (cosine decay).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--kd-alpha", default=0.7, show_default=True, help="Weight of the distillation loss.")
@click.option("--kd-temperature", default=4.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def finetune(model, data, epochs, teacher, resolution, width, num_classes, weights, out, train_samples,
             eval_samples, lr, batch_size, kd_alpha, kd_temperature, seed, as_json):
    """Train MODEL (zoo name or lwdeploy checkpoint) on DATA, with KD from --teacher; save a checkpoint."""
    import torch
    from rich.console import Console

    from lwdeploy.errors import LwdeployError
    from lwdeploy.models import get_info
    from lwdeploy.quantization import pruning
    from lwdeploy.quantization.datasets import open_dataset
    from lwdeploy.quantization.finetune import TrainConfig, check_config, evaluate, train

    console = Console(stderr=True)
    cfg = check_config(TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, kd_alpha=kd_alpha,
                                   kd_temperature=kd_temperature, seed=seed))
    if resolution is not None and not 16 <= resolution <= 1024:
        raise LwdeployError(f"resolution {resolution} is out of range", "use 16..1024, e.g. 64")
    torch.manual_seed(seed)
    is_ckpt = pruning.is_pruned_checkpoint(model) if model.endswith((".pt", ".pth")) else False
    if num_classes is None and not is_ckpt:
        num_classes = 10 if data.lower().replace("_", "-") in ("fashion-mnist", "fmnist") else None
    net, meta = pruning.build_from_spec(model, num_classes=num_classes, width=width, weights=weights)
    res = resolution or meta.get("resolution") or 64
    info = get_info(meta["model"])
    train_set = open_dataset(data, train=True, resolution=res, mean=info.mean, std=info.std, limit=train_samples)
    eval_set = open_dataset(data, train=False, resolution=res, mean=info.mean, std=info.std, limit=eval_samples)
    teacher_net = None
    if teacher:
        is_file = str(teacher).endswith((".pt", ".pth"))
        teacher_net, _ = pruning.build_from_spec(
            teacher, num_classes=None if is_file else (num_classes or meta["overrides"].get("num_classes")))
    before = evaluate(net, eval_set, progress=True, console=console)
    console.log(f"training on {train_set.source}; accuracy before: {before:.2f}%")
    result = train(net, train_set, cfg, teacher=teacher_net, eval_dataset=None, console=console)
    after = evaluate(net, eval_set, progress=True, console=console)
    summary = {"model": meta["model"], "overrides": meta["overrides"], "resolution": res,
               "pruning": {k: v for k, v in (meta.get("pruning") or {}).items() if k != "history"} or None,
               "train_source": train_set.source, "eval_source": eval_set.source, "epochs": epochs,
               "teacher": str(teacher) if teacher else None, "acc_before": before, "acc_after": after,
               "seconds": round(result.seconds, 1), "history": result.history}
    if teacher_net is not None:
        summary["teacher_acc"] = evaluate(teacher_net, eval_set, progress=True, console=console)
    path = out or f"{meta['model']}_ft.pt"
    if meta.get("pruning"):
        net.lwdeploy_pruning = meta["pruning"]
    extra = dict(meta.get("extra") or {})
    extra["finetune"] = {k: v for k, v in summary.items() if k not in ("model", "overrides", "pruning")}
    pruning.save_checkpoint(net, path, model_name=meta["model"], overrides=meta["overrides"], resolution=res,
                            extra=extra)
    console.print(f"accuracy on {eval_set.source}: {before:.2f}% → [bold]{after:.2f}%[/]"
                  + (f" (teacher {summary['teacher_acc']:.2f}%)" if teacher_net is not None else "")
                  + f" in {result.seconds:.0f} s")
    console.print(f"[green]wrote[/] {path}")
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
