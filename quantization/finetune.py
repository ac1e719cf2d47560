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


def train(student: nn.Module, dataset: Dataset, cfg: TrainConfig | None = None, *, teacher: nn.Module | None = None,
          eval_dataset: Dataset | None = None, progress: bool = True, console=None) -> TrainResult:
    """Train `student` in place on `dataset` (with KD from `teacher` when given); rich progress bars."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    cfg = check_config(cfg or TrainConfig())
    _check_head(student, dataset, "model")
    if teacher is not None:
        _check_head(teacher, dataset, "teacher")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=len(dataset) >
                        cfg.batch_size, num_workers=0)
    if len(loader) == 0:
        raise LwdeployError("the training set is empty", "pass a dataset with images in it")
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    total = cfg.epochs * len(loader)
    warm = min(cfg.warmup_steps, max(1, total // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    history, step, t0, loss_ema = [], 0, time.perf_counter(), None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        for epoch in range(cfg.epochs):
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}" + (" (KD)" if teacher is not None else ""),
                                total=len(loader), loss=float("nan"), acc=0.0)
            student.train()
            seen = correct = 0
            loss_sum = 0.0
            for x, y in loader:
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                with torch.no_grad():
                    t_logits = teacher(x) if teacher is not None else None
                logits = student(x)
                loss = distillation_loss(logits, y, t_logits, cfg.kd_alpha, cfg.kd_temperature)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"training diverged (loss {loss.item()}) at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(y)
                correct += (logits.argmax(1) == y).sum().item()
                loss_sum += loss.item() * len(y)
                loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
                bar.update(task, advance=1, loss=loss_ema, acc=correct / seen)
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": 100.0 * correct / seen}
            if eval_dataset is not None:
                record["eval_acc"] = evaluate(student, eval_dataset, progress=progress, console=console)
            history.append(record)
    student.eval()
    return TrainResult(cfg.epochs, step, time.perf_counter() - t0, float(loss_ema or 0.0), history)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, progress: bool = False,
             console=None) -> float:
    """Top-1 accuracy in percent."""
    from rich.progress import Progress

    _check_head(model, dataset, "model")
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    correct = seen = 0
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(loader))
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
            bar.advance(task)
    if seen == 0:
        raise LwdeployError("the evaluation set is empty", "pass a dataset with images in it")
    return 100.0 * correct / seen
