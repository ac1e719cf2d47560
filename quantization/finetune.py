"""Recovery training after pruning: a short loop with knowledge distillation from the unpruned model.

loss = (1 − α)·CE(student, label) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))  (Hinton et al. 2015).
The teacher is the model before pruning: it already knows the task, and its soft targets carry more signal
per image than labels, which is what a few epochs of recovery need. Without a teacher the loss is plain CE
(that is also how the unpruned baseline is trained).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lwdeploy.errors import LwdeployError


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 2e-3              # AdamW peak; cosine decay to 0 over all steps, short linear warm-up
    weight_decay: float = 1e-4
    batch_size: int = 64
    kd_alpha: float = 0.7         # weight of the distillation term (only with a teacher)
    kd_temperature: float = 4.0
    warmup_steps: int = 50
    seed: int = 0


@dataclass
class TrainResult:
    epochs: int
    steps: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)   # per epoch: loss, train acc, eval acc (if evaluated)

    def to_json(self) -> dict:
        return asdict(self)


def check_config(cfg: TrainConfig) -> TrainConfig:
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise LwdeployError(f"epochs {cfg.epochs!r} must be a positive integer", "e.g. --epochs 2")
    if not cfg.lr > 0:
        raise LwdeployError(f"learning rate {cfg.lr} must be positive", "e.g. --lr 0.002")
    if cfg.batch_size < 1:
        raise LwdeployError(f"batch size {cfg.batch_size} must be positive", "e.g. --batch-size 64")
    if not 0 <= cfg.kd_alpha <= 1:
        raise LwdeployError(f"KD weight {cfg.kd_alpha} must be in [0, 1]", "e.g. --kd-alpha 0.7")
    if not cfg.kd_temperature > 0:
        raise LwdeployError(f"KD temperature {cfg.kd_temperature} must be positive", "e.g. --kd-temperature 4")
    return cfg


def distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                      alpha: float, temperature: float) -> torch.Tensor:
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    return (1 - alpha) * ce + alpha * kd


def _check_head(model: nn.Module, dataset: Dataset, what: str) -> None:
    n_classes = len(getattr(dataset, "classes", ())) or None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if n_classes and linears and linears[-1].out_features != n_classes:
        raise LwdeployError(f"the {what} has {linears[-1].out_features} outputs but the data has {n_classes} classes",
                            f"build the model with --num-classes {n_classes}")


def _batches(dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
             device: torch.device, augment: bool = False, drop_last: bool = False):
    """(x, y) batches on `device`. Datasets with `as_tensors` (Fashion-MNIST) are batched from memory —
    per-item resizing would cost more than a training step of these nets on a GPU — others go through a
    DataLoader. `augment` (in-memory path): random horizontal flip per image and one random shift of up
    to R/8 pixels per batch, which keeps a 10+ epoch baseline from overfitting 60k small images."""
    if hasattr(dataset, "as_tensors") and hasattr(dataset, "normalise"):
        cache = getattr(dataset, "_tensor_cache", None)
        if cache is None or cache[0].device != device:
            cache = dataset.as_tensors(device)
            dataset._tensor_cache = cache
        grey, labels = cache
        n = len(labels)
        order = torch.randperm(n, generator=generator).to(device) if shuffle else torch.arange(n, device=device)
        stop = n - n % batch_size if drop_last and n > batch_size else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            x = grey[idx]
            if augment:
                flip = torch.rand(len(idx), generator=generator).to(device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                r = x.shape[-1]
                pad = max(1, r // 8)
                dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
                x = F.pad(x, (pad, pad, pad, pad))[..., dy:dy + r, dx:dx + r]
            yield dataset.normalise(x), labels[idx]
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        drop_last=drop_last and len(dataset) > batch_size, num_workers=0)
    for x, y in loader:
        yield x.to(device), y.to(device)


def _n_batches(dataset: Dataset, batch_size: int, drop_last: bool) -> int:
    n = len(dataset)
    return n // batch_size if drop_last and n > batch_size else math.ceil(n / batch_size)


def train(student: nn.Module, dataset: Dataset, cfg: TrainConfig | None = None, *, teacher: nn.Module | None = None,
          eval_dataset: Dataset | None = None, progress: bool = True, console=None, device: str | None = None,
          augment: bool = False, report=None) -> TrainResult:
    """Train `student` in place on `dataset` (with KD from `teacher` when given); rich progress bars.

    `device`: "cuda", "cpu" (default: where the student's parameters are); the model ends there too.
    `report(msg)`: a callback given a line about ten times per epoch instead of bars (for callers that
    already show a live display, e.g. `lwdeploy export`).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    cfg = check_config(cfg or TrainConfig())
    _check_head(student, dataset, "model")
    dev = torch.device(device) if device else next(student.parameters()).device
    student.to(dev)
    if teacher is not None:
        _check_head(teacher, dataset, "teacher")
        teacher.to(dev).eval()  # its forward runs under no_grad; its parameters are left as they are (a
        # teacher is often pruned again later, and a copy with requires_grad off would not train)
    g = torch.Generator().manual_seed(cfg.seed)
    drop_last = True
    n_batches = _n_batches(dataset, cfg.batch_size, drop_last)
    if n_batches == 0:
        raise LwdeployError("the training set is empty", "pass a dataset with images in it")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise LwdeployError("the model has no trainable parameters (all have requires_grad off)",
                            "was it used as a frozen teacher? train a fresh copy")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    total = cfg.epochs * n_batches
    warm = min(cfg.warmup_steps, max(1, total // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    history, step, t0, loss_ema = [], 0, time.perf_counter(), None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    every = max(1, min(n_batches // 10, 20))  # bar/report updates (and the only device syncs)
    with Progress(*columns, console=console, disable=not progress or report is not None, transient=False) as bar:
        for epoch in range(cfg.epochs):
            label = f"epoch {epoch + 1}/{cfg.epochs}" + (" (KD)" if teacher is not None else "")
            task = bar.add_task(label, total=n_batches, loss=float("nan"), acc=0.0)
            student.train()
            seen = 0
            # running sums stay on the device: a .item() per step would stall a GPU on every batch
            correct = torch.zeros((), device=dev)
            loss_sum = torch.zeros((), device=dev)
            for i, (x, y) in enumerate(_batches(dataset, cfg.batch_size, shuffle=True, generator=g, device=dev,
                                                augment=augment, drop_last=drop_last)):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                with torch.no_grad():
                    t_logits = teacher(x) if teacher is not None else None
                logits = student(x)
                loss = distillation_loss(logits, y, t_logits, cfg.kd_alpha, cfg.kd_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                loss_sum += loss.detach() * len(y)
                if (i + 1) % every == 0 or i + 1 == n_batches:
                    loss_now = loss.item()
                    if not math.isfinite(loss_now):
                        raise RuntimeError(f"training diverged (loss {loss_now}) at step {step}; lower --lr")
                    loss_ema = loss_sum.item() / seen
                    acc = correct.item() / seen
                    bar.update(task, completed=i + 1, loss=loss_ema, acc=acc)
                    if report is not None:
                        report(f"{label}: step {i + 1}/{n_batches}, loss {loss_ema:.3f}, train acc {acc:.1%}, "
                               f"{time.perf_counter() - t0:.0f} s")
            seen = max(seen, 1)
            correct, loss_sum = correct.item(), loss_sum.item()
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": 100.0 * correct / seen}
            if eval_dataset is not None:
                record["eval_acc"] = evaluate(student, eval_dataset, progress=progress and report is None,
                                              console=console)
            history.append(record)
    student.eval()
    return TrainResult(cfg.epochs, step, time.perf_counter() - t0, float(loss_ema or 0.0), history)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, progress: bool = False,
             console=None, device: str | None = None) -> float:
    """Top-1 accuracy in percent (on `device`, default: where the model's parameters are)."""
    from rich.progress import Progress

    _check_head(model, dataset, "model")
    dev = torch.device(device) if device else next(model.parameters()).device
    model.to(dev).eval()
    correct = seen = 0
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=_n_batches(dataset, batch_size, False))
        for x, y in _batches(dataset, batch_size, shuffle=False, generator=None, device=dev):
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
            bar.advance(task)
    if seen == 0:
        raise LwdeployError("the evaluation set is empty", "pass a dataset with images in it")
    return 100.0 * correct / seen


def recover_for_export(pruned: nn.Module, unpruned: nn.Module, calib_images: torch.Tensor, *, mean, std,
                       resolution: int, epochs: int = 0, dataset: str | None = None, trained: bool = True,
                       samples: int | None = None, say=None) -> dict:
    """The export pipeline's step after pruning: BatchNorm re-estimation, then optional KD recovery.

    BN statistics are always re-estimated on the calibration images (removed channels shift every
    downstream BN's input; measured in benchmarks/prune_bench.py). With `epochs`, `pruned` is trained in
    place on `dataset` (fashion-mnist or an image folder; its first `samples` images if given) with the unpruned
    model as teacher — unless the
    weights are random (`trained` False): a random teacher has nothing to teach, so labels alone are used,
    and said. Returns a record for the manifest; `say(msg)` gets progress lines.
    """
    from lwdeploy.quantization.datasets import open_dataset
    from lwdeploy.quantization.pruning import reestimate_batchnorm

    say = say or (lambda msg: None)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise LwdeployError(f"--finetune-epochs {epochs!r} must be a non-negative integer", "e.g. --finetune-epochs 2")
    say(f"re-estimating BatchNorm statistics of the pruned model on {len(calib_images)} calibration images")
    reestimate_batchnorm(pruned, calib_images.split(32))
    record = {"batchnorm": f"re-estimated on {len(calib_images)} calibration images"}
    if not epochs:
        return record
    spec = dataset or "fashion-mnist"
    if samples is not None and samples < 1:
        raise LwdeployError(f"--finetune-samples {samples} must be positive", "e.g. --finetune-samples 5000")
    train_set = open_dataset(spec, train=True, resolution=resolution, mean=mean, std=std, limit=samples)
    teacher = unpruned if trained else None
    say(f"recovery: {epochs} epoch(s) on {train_set.source}, "
        + ("knowledge distillation from the unpruned model" if teacher is not None else
           "labels only (random weights: the unpruned model has nothing to teach)"))
    result = train(pruned, train_set, TrainConfig(epochs=epochs, lr=1e-3), teacher=teacher, report=say,
                   augment=True)
    record.update({"finetune_epochs": epochs, "dataset": train_set.source, "teacher": "unpruned model"
                   if teacher is not None else None, "seconds": round(result.seconds, 1),
                   "final_train_acc": round(result.history[-1]["train_acc"], 2), "train_images": len(train_set)})
    return record
