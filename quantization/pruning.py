"""Structured channel pruning that physically removes channels (Torch-Pruning's dependency graph).

Why a dependency graph: removing output channel i of a conv forces removing input channel i of every
consumer, the same channel on the other side of every residual add, in depthwise convs and SE gates, and
the right offsets through concat/split. Torch-Pruning traces the model once and groups all coupled tensors,
so a group is pruned as a unit and the network stays runnable.

After pruning we *check* that the structure was respected, not just that shapes line up: a copy of the
original network with the removed channels zeroed out must compute the same logits as the pruned network
(exact for per-channel normalisation and activations with f(0)=0, which is every block in the zoo). A wrong
index mapping (e.g. through a channel shuffle the tracer misread) changes the logits and is reported.

Checkpoints (`save_pruned` / `load_pruned`) record the model name, its overrides, the pruning settings,
ShuffleNet v2's trunk selections (shuffle_trunk.py) and Torch-Pruning's pruning history (module name, in/out,
channel indices) beside the state dict — plain
dicts/lists/tensors only, loadable with weights_only=True — so the exact pruned shapes are rebuilt by
replaying the history on a freshly built model.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from lwdeploy.errors import LwdeployError

from . import shuffle_trunk

CHECKPOINT_FORMAT = "lwdeploy.checkpoint"
CHECKPOINT_VERSION = 2
IMPORTANCES = ("l1", "l2", "bn", "random")
# Normalisations whose output for a channel depends on other channels: the masked-equivalence check is not
# exact for them (the zeroed channels still enter the mean/variance), so it is skipped — and said so.
_CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


def check_ratio(ratio: float) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise LwdeployError(f"prune ratio {ratio!r} is not a number", "e.g. --ratio 0.3") from None
    if not 0.0 < r < 1.0:
        raise LwdeployError(f"prune ratio {ratio} must be in (0, 1)",
                            "it is the fraction of channels removed from each prunable layer, e.g. 0.3")
    return r


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise LwdeployError(f"unknown importance {name!r}", f"choose from {', '.join(IMPORTANCES)}")


def default_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are the model's contract: the classifier (its out features are the classes)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    last = linears[-1:] if linears else convs[-1:]  # conv-only heads (1×1 conv classifier)
    return list(last)


def prune(model: nn.Module, ratio: float, example: torch.Tensor, *, round_to: int = 8, importance: str = "l1",
          ignored: Sequence[nn.Module] | None = None, layer_ratios: dict[str, float] | None = None,
          verify: bool = True, prune_trunk: bool = True) -> nn.Module:
    """Return a copy of `model` with `ratio` of the channels of every prunable layer group removed.

    `round_to`: kept channel counts are rounded to this multiple (8 suits NEON/XNNPACK int8 kernels).
    `importance`: l1 | l2 (group weight magnitude), bn (BatchNorm scale), random (a baseline).
    `ignored`: modules to keep whole (default: the classifier). `layer_ratios`: {module name: ratio} to
    override the global ratio per layer (e.g. from measured per-layer latency).
    `verify`: check that the pruned network equals the original with the removed channels zeroed.
    `prune_trunk`: also prune ShuffleNet v2's shuffled trunk (shuffle_trunk.py; the global ratio applies).

    Channel groups that pass through ops the tracer cannot map index-by-index (a channel shuffle's
    view/transpose, unbind, expand) are kept whole when pruning everything fails or gives a different
    function; the rest is still pruned. `model` itself is left unchanged (it can be the KD teacher).
    The pruning record (history, settings) is attached as `pruned.lwdeploy_pruning` for `save_checkpoint`.
    """
    ratio = check_ratio(ratio)
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise LwdeployError(f"round_to {round_to!r} must be a positive integer", "e.g. --round-to 8 (1 disables)")
    _importance(importance)  # validate the name before any slow work
    for name, r in (layer_ratios or {}).items():
        if name not in dict(model.named_modules()):
            raise LwdeployError(f"layer_ratios names {name!r}, which is not a module of the model",
                                "use names from model.named_modules()")
        check_ratio(r)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            before = model(example)
        except Exception as e:
            raise LwdeployError(f"{type(model).__name__} does not run on an input of shape {tuple(example.shape)} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
                                "pass an example input the model accepts (e.g. a larger --resolution)") from None
    ignored_names = _names_of(model, default_ignored(model) if ignored is None else ignored)
    label = type(model).__name__
    # ShuffleNet v2's shuffled trunk first (Torch-Pruning cannot follow it; see shuffle_trunk.py), then the
    # rest on the narrower net, checked against the original with both kinds of removed channels zeroed
    trunk = shuffle_trunk.plan(model, ratio, round_to, importance) if prune_trunk else shuffle_trunk.TrunkPlan()
    base, twin = model, None
    if trunk.selections:
        base = shuffle_trunk.apply(copy.deepcopy(model), trunk.selections).eval()
        twin = copy.deepcopy(model).eval()
        shuffle_trunk.zero_dropped(twin, trunk)
    try:
        pruned = _attempt(base, ratio, example, before, round_to, importance, ignored_names, layer_ratios, verify,
                          twin)
    except LwdeployError as first:
        unsafe = _unsafe_group_modules(base, example, ignored_names)
        if not unsafe:
            raise LwdeployError(f"cannot prune {label}: {first.message}", first.hint) from None
        try:
            pruned = _attempt(base, ratio, example, before, round_to, importance, ignored_names | unsafe,
                              layer_ratios, verify, twin)
        except LwdeployError as second:
            raise LwdeployError(f"cannot prune {label}: {first.message} (keeping the {len(unsafe)} layers that "
                                f"feed reshape/shuffle/split ops whole did not help: {second.message})",
                                "export it without --prune") from None
        pruned.lwdeploy_pruning["kept_whole"] = sorted(unsafe)
        pruned.lwdeploy_pruning["note"] = (f"{len(unsafe)} layers feed reshape/shuffle/split ops whose channel "
                                           f"mapping the tracer cannot follow; they were kept whole")
    if trunk.selections:
        pruned.lwdeploy_pruning["trunk"] = trunk.selections
        pruned.lwdeploy_pruning["trunk_widths"] = {k: list(v) for k, v in trunk.widths.items()}
    model.train(was_training)
    pruned.train(was_training)
    return pruned


def _names_of(model: nn.Module, modules: Iterable[nn.Module]) -> set[str]:
    names = {m: n for n, m in model.named_modules()}
    out = set()
    for m in modules:
        if m not in names:
            raise LwdeployError("an ignored layer is not a submodule of the model", "pass modules of this model")
        out.add(names[m])
    return out


def _attempt(model, ratio, example, before, round_to, importance, ignored_names, layer_ratios, verify,
             twin=None) -> nn.Module:
    """Prune a copy of `model`; raise LwdeployError when it fails or changes the function (see module doc).
    `twin`: the unpruned original with channels already removed from `model` zeroed (default: `model`)."""
    import torch_pruning as tp

    label = type(model).__name__
    work = copy.deepcopy(model).eval()
    reference = copy.deepcopy(model if twin is None else twin).eval() if verify else None
    modules = dict(work.named_modules())
    names = {m: n for n, m in modules.items()}
    imp_fn = _importance(importance)
    groups = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stand_ins = _swap_shuffles(work, example)
            modules = dict(work.named_modules())
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=example)
            _roots_in_forward_order(dg, work)
            ignored_mods = [m for n in sorted(ignored_names) for m in modules[n].modules()]
            for full in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=[nn.Conv2d, nn.Linear]):
                root, handler = full[0].dep.target.module, full[0].dep.handler
                idxs = _choose_channels(dg, full, root, handler, imp_fn,
                                        float((layer_ratios or {}).get(names.get(root), ratio)), round_to)
                if not idxs:
                    continue
                group = dg.get_pruning_group(root, handler, idxs)
                if reference is not None:
                    _zero_group_in(reference, group, names, dg)
                group.prune()
                groups += 1
            _restore_shuffles(work, stand_ins)
    except Exception as e:  # the tracer meets an op it cannot model: say which and why, plainly
        raise LwdeployError(f"Torch-Pruning failed to trace or prune {label} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                            "export it without --prune") from None
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in dg.pruning_history()]
    if not history:
        raise LwdeployError(f"nothing in {label} could be pruned at ratio {ratio:g} with round_to={round_to}",
                            "its layers are too narrow for this ratio/rounding, or all of them are coupled to a "
                            "layer that must stay whole; try a larger ratio or a smaller --round-to")
    _sync_channel_attributes(work)
    with torch.no_grad():
        try:
            after = work(example)
        except Exception as e:
            raise LwdeployError(f"the pruned {label} no longer runs ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})", "export it without --prune") from None
    if after.shape != before.shape:
        raise LwdeployError(f"pruning changed the output shape of {label} from {tuple(before.shape)} to "
                            f"{tuple(after.shape)}", "export it without --prune")
    check = _check_equivalent(reference, work, example, label) if reference is not None else "not checked"
    work.lwdeploy_pruning = {"ratio": ratio, "round_to": round_to, "importance": importance,
                             "history": history, "groups": groups, "check": check}
    return work


class _ShuffleStandIn(nn.Conv2d):
    """A ChannelShuffle written as the equivalent 1×1 conv with a 0/1 permutation matrix, only while tracing.

    Torch-Pruning cannot follow a shuffle's view → transpose → view (its reshape index mapping divides by
    zero or maps channels to the wrong place). As a conv, the graph is exact: channels before the shuffle
    and after it form separate groups, and both touch the stand-in, which we never prune — so the shuffled
    trunk keeps its width while everything between shuffles (branch/bottleneck channels) is pruned.
    """

    def __init__(self, permutation: torch.Tensor):
        c = len(permutation)
        super().__init__(c, c, 1, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            self.weight[torch.arange(c), permutation, 0, 0] = 1.0


def _is_shuffle(m: nn.Module) -> bool:
    from lwdeploy.models.layers import ChannelShuffle

    return isinstance(m, ChannelShuffle) or (type(m).__name__ == "ChannelShuffle" and not any(m.parameters()))


def _swap_shuffles(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """Replace every channel shuffle by its stand-in conv; returns {name: original} for _restore_shuffles."""
    found = {n: m for n, m in model.named_modules() if n and _is_shuffle(m)}
    if not found:
        return {}
    from .lowering import input_channels

    widths = input_channels(model, list(found.values()), example)
    for name, m in found.items():
        if m in widths:
            perm = shuffle_trunk.shuffle_permutation(m, widths[m])
            _set_submodule(model, name, _ShuffleStandIn(torch.as_tensor(perm)))
    return {n: m for n, m in found.items() if m in widths}


def _restore_shuffles(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, m in originals.items():
        _set_submodule(model, name, m)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _keep_count(units: int, ratio: float, multiple: int) -> int:
    """Kept units: nearest multiple of `multiple`, at least one multiple, never more than there are."""
    keep = units * (1.0 - ratio)
    keep = max(multiple, int(keep + multiple / 2) // multiple * multiple)
    return min(keep, units)


def _choose_channels(dg, group, root, handler, imp_fn, ratio: float, round_to: int) -> list[int]:
    """Channel indices (in the root's space) to remove from one group, or [] to keep it whole.

    A root's channels can be tied in k blocks: GhostNet's residual adds `x` to cat[a, dw(a)], so channel j
    of `x` and j + C/2 fall together; grouped convs tie j and j + C/groups. We detect k by asking the graph
    what removing channel 0 removes, rank the C/k *units* (importance averaged over the blocks), and round
    the kept units so the kept channel count k·units is a multiple of round_to.
    """
    n = dg.get_out_channels(root) if dg.is_out_channel_pruning_fn(handler) else dg.get_in_channels(root)
    if not n or n <= 1:
        return []
    probe = sorted(int(i) for i in dg.get_pruning_group(root, handler, [0])[0].idxs)
    k = len(probe)
    for dep, _ in group:  # grouped (not depthwise) convs: each conv group must keep the same size
        mod = dep.target.module
        if isinstance(mod, _ShuffleStandIn):
            return []  # channels that go through a channel shuffle keep their width (see _swap_shuffles)
        if isinstance(mod, nn.Conv2d) and 1 < mod.groups < mod.out_channels:
            k = max(k, mod.groups)
    if k == 0 or n % k or (len(probe) > 1 and probe != list(range(0, n, n // k))):
        return []  # a coupling we cannot express as blocks: keep the group whole rather than guess
    unit = n // k
    imp = imp_fn(group)
    if imp is None or imp.numel() != n:
        return []
    unit_imp = imp.view(k, unit).mean(0)
    multiple = round_to // k if round_to % k == 0 else round_to
    keep = _keep_count(unit, ratio, max(1, multiple))
    if keep >= unit:
        return []
    drop = torch.argsort(unit_imp)[: unit - keep].tolist()
    return sorted(int(u) + b * unit for u in drop for b in range(k))


def _roots_in_forward_order(dg, model: nn.Module) -> None:
    """Make the *producer* of a channel group its root (Torch-Pruning lists modules output-first).

    The root's channel space is where the ratio and round_to apply. Rooted at a consumer after a concat of
    a tensor with a channel-wise function of itself (GhostNet: cat[a, dw(a)]), index j and j+C name the
    same kept/removed channel of `a`, so pruning 30% of the concat removed up to 60% of `a` and broke the
    rounding. Rooted at the producer, 30% of `a` is removed and both halves of the concat follow.
    """
    order = {m: i for i, m in enumerate(model.modules())}
    items = sorted(dg.module2node.items(), key=lambda kv: order.get(kv[0], len(order)))
    dg.module2node = dict(items)


# Node types whose channel index mapping Torch-Pruning cannot always follow: a shuffle's view + transpose,
# and splits into unequal chunks whose sizes it does not update after an earlier group shrank them (MixConv).
_UNSAFE_NODE_TYPES = ("RESHAPE", "UNBIND", "EXPAND", "SLICE", "SPLIT")


def _unsafe_group_modules(model: nn.Module, example: torch.Tensor, ignored_names: set[str]) -> set[str]:
    """Names of the conv/linear layers whose output-channel group passes through an unsafe node."""
    import torch_pruning as tp

    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    names = {m: n for n, m in modules.items()}
    unsafe_types = {getattr(tp.ops.OPTYPE, t) for t in _UNSAFE_NODE_TYPES if hasattr(tp.ops.OPTYPE, t)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=example)
            groups = list(dg.get_all_groups(ignored_layers=[modules[n] for n in ignored_names]))
    except Exception:
        return set()
    out: set[str] = set()
    for group in groups:
        if any(dep.source.type in unsafe_types or dep.target.type in unsafe_types for dep, _ in group):
            for dep, _ in group:
                mod = dep.target.module
                if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(mod, (nn.Conv2d, nn.Linear)):
                    out.add(names[mod])
    return out


def _zero_group_in(reference: nn.Module, group, names: dict, DG) -> None:
    """Zero, in `reference`, the channels `group` removes from the pruned model (outputs of producers)."""
    ref_modules = dict(reference.named_modules())
    with torch.no_grad():
        for dep, idxs in group:
            mod = dep.target.module
            if not DG.is_out_channel_pruning_fn(dep.handler) or mod not in names:
                continue
            twin = ref_modules.get(names[mod])
            if twin is None or not idxs:
                continue
            idx = torch.as_tensor([int(i) for i in idxs], dtype=torch.long)
            if isinstance(twin, (nn.Conv2d, nn.Linear, nn.Conv1d)):
                twin.weight[idx] = 0
                if twin.bias is not None:
                    twin.bias[idx] = 0
            elif isinstance(twin, nn.modules.batchnorm._BatchNorm):
                if twin.weight is not None:
                    twin.weight[idx] = 0
                    twin.bias[idx] = 0
            elif isinstance(twin, nn.PReLU) and twin.weight.numel() > 1:
                pass  # prelu(0) = 0 whatever the slope


def _check_equivalent(reference: nn.Module, pruned: nn.Module, example: torch.Tensor, name: str) -> str:
    if any(isinstance(m, _CROSS_CHANNEL_NORMS) for m in reference.modules()):
        return "not checked: LayerNorm/GroupNorm mix channels, so zeroing is not equivalent to removing"
    # float64: random-init nets reach huge activations, where float32 summation order alone differs by ~1e-3
    reference = reference.double().eval()
    twin = copy.deepcopy(pruned).double().eval()
    with torch.no_grad():
        want = reference(example.double())
        got = twin(example.double())
    scale = want.abs().max().item() + 1e-12
    err = (want - got).abs().max().item()
    if err > 1e-6 * scale:
        raise LwdeployError(
            f"pruning {name} did not respect its structure: the pruned network differs from the original with "
            f"the same channels zeroed by {err:.3g} (logit scale {scale:.3g})",
            "it likely has a channel shuffle/split or reshape the dependency tracer misreads; export it unpruned")
    return "masked-equivalent"


def _sync_channel_attributes(model: nn.Module) -> None:
    """Keep informational channel attributes of the shared blocks true after their convs shrank."""
    for m in model.modules():
        conv = getattr(m, "conv", None)
        if isinstance(conv, nn.Conv2d) and hasattr(m, "in_channels") and not isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels = conv.in_channels, conv.out_channels
        # GhostModule: the concat is sliced to `out_ch`; after pruning the concat itself is the output width
        if hasattr(m, "out_ch") and hasattr(m, "primary") and hasattr(m, "cheap") and not getattr(m, "needs_slice", 1):
            m.out_ch = m.primary.conv.out_channels + m.cheap.conv.out_channels


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches, *, device: str | None = None) -> nn.Module:
    """Recompute every BatchNorm's running mean/var on `batches` (a tensor of images or an iterable of image
    batches / (images, labels) pairs); weights are untouched. Returns the model in eval mode.

    Why after pruning: a BN's statistics describe its input, and removing channels upstream changes that input
    (a consumer conv lost some of its input channels, so its outputs shift), while the stored statistics still
    describe the unpruned network. Re-estimating them is free (forward passes only) and is the usual first
    step before recovery training. Unlike the pipeline's `settle_batchnorm` (random-weight models, one batch,
    leaves a cumulative momentum behind), this keeps every other module in eval mode (no dropout), averages
    over all batches, and restores each BN's momentum so later fine-tuning behaves as usual.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model.eval()
    dev = torch.device(device) if device else next(model.parameters()).device
    model.to(dev)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch given
        bn.train()
    seen = 0
    for batch in ([batches] if isinstance(batches, torch.Tensor) else batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x.to(dev))
        seen += len(x)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    if seen == 0:
        raise LwdeployError("no images to re-estimate BatchNorm statistics on", "pass calibration images")
    return model.eval()


def channel_report(model: nn.Module) -> list[tuple[str, int]]:
    """(name, out channels) of every conv/linear, for tables and tests."""
    return [(n, m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# --------------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(model: nn.Module, path: str | Path, *, model_name: str, overrides: dict,
                    resolution: int, extra: dict | None = None) -> Path:
    """Write a checkpoint the export pipeline can rebuild (pruned or not); atomically."""
    import io

    from lwdeploy.atomic import write_bytes

    pruning = getattr(model, "lwdeploy_pruning", None)
    obj = {
        "format": CHECKPOINT_FORMAT,
        # version 2 adds the ShuffleNet v2 trunk selections; without them the file is what version 1 reads
        "version": CHECKPOINT_VERSION if pruning and pruning.get("trunk") else 1,
        "model": model_name,
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "resolution": int(resolution),
        "pruning": None if pruning is None else {k: pruning[k] for k in ("ratio", "round_to", "importance",
                                                                          "history", "trunk") if k in pruning},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": _plain(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


save_pruned = save_checkpoint


def _plain(obj):
    """Only weights_only-safe values: dict/list/str/int/float/bool/None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate an lwdeploy checkpoint dict (weights_only=True: no code runs)."""
    from lwdeploy.models.loader import safe_load

    path = Path(path)
    obj = safe_load(path, "pass a file written by `lwdeploy prune` / `lwdeploy finetune`")
    if not is_checkpoint_dict(obj):
        raise LwdeployError(f"{path.name} is not an lwdeploy checkpoint (no model name / pruning record)",
                            "a plain state dict cannot rebuild pruned shapes: use --weights for unpruned models, "
                            "or write the file with `lwdeploy prune`")
    if obj.get("version", 0) > CHECKPOINT_VERSION:
        raise LwdeployError(f"{path.name} is checkpoint version {obj['version']}; this lwdeploy reads "
                            f"≤ {CHECKPOINT_VERSION}", "upgrade lwdeploy")
    return obj


def is_checkpoint_dict(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT and "state_dict" in obj


def is_pruned_checkpoint(path: str | Path) -> bool:
    """Cheap test the CLI/pipeline can use to route a --weights file (False for plain state dicts)."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return is_checkpoint_dict(obj)


def load_pruned(path: str | Path, *, overrides: dict | None = None) -> nn.Module:
    """Rebuild the model a checkpoint describes: build it, replay the pruning history, load the weights.

    `overrides` (e.g. {"width": 0.75}) replace the recorded ones — the shapes must still match, otherwise a
    LwdeployError names the first mismatching key and both shapes.
    """
    model, _ = load_checkpoint(path, overrides=overrides)
    return model


def load_checkpoint(path: str | Path, *, overrides: dict | None = None) -> tuple[nn.Module, dict]:
    """Like load_pruned, and also return the checkpoint's metadata (without the state dict)."""
    from lwdeploy.models import create

    path = Path(path)
    ck = read_checkpoint(path)
    over = dict(ck.get("overrides") or {})
    over.update({k: v for k, v in (overrides or {}).items() if v is not None})
    model = create(ck["model"], **over)
    state = ck["state_dict"]
    pruning = ck.get("pruning")
    replay_error = None
    if pruning and pruning.get("trunk"):
        try:  # the trunk was pruned first, and the recorded history indexes the narrower net
            shuffle_trunk.apply(model, pruning["trunk"])
        except (ValueError, IndexError, RuntimeError) as e:
            replay_error = f"trunk selections do not fit: {str(e).splitlines()[0][:160]}"
    if pruning and pruning.get("history") and replay_error is None:
        replay_error = _replay(model, pruning["history"], int(ck.get("resolution") or 64))
    _load_state_checked(model, state, path.name, ck["model"], over, replay_error)
    if pruning:
        model.lwdeploy_pruning = dict(pruning, check="replayed from checkpoint")
    meta = {k: v for k, v in ck.items() if k != "state_dict"}
    return model.eval(), meta


def _replay(model: nn.Module, history: list, resolution: int) -> str | None:
    """Re-apply the recorded pruning; returns why it failed (the shape check then names the mismatch)."""
    import torch_pruning as tp

    model.eval()
    example = torch.zeros(1, 3, resolution, resolution)
    stand_ins = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stand_ins = _swap_shuffles(model, example)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            modules = dict(model.named_modules())
            for name, is_out, idxs in history:
                mod = modules.get(name)
                if mod is None:
                    return f"the pruning history names {name!r}, which this model does not have"
                n = dg.get_out_channels(mod) if is_out else dg.get_in_channels(mod)
                if idxs and n is not None and max(idxs) >= n:
                    return f"the pruning history removes channel {max(idxs)} of {name!r}, which has {n}"
                dg.load_pruning_history([[name, is_out, list(idxs)]])
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        _restore_shuffles(model, stand_ins)
        _sync_channel_attributes(model)
    return None


def _load_state_checked(model: nn.Module, state: dict, file: str, name: str, over: dict,
                        replay_error: str | None) -> None:
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise LwdeployError(f"checkpoint {file} does not fit {name} {over}: key {k!r} is missing",
                                "it was written for another model")
        if tuple(state[k].shape) != tuple(v.shape):
            why = f" ({replay_error})" if replay_error else ""
            raise LwdeployError(
                f"checkpoint {file} does not fit {name} {over}: first mismatch {k!r}: checkpoint "
                f"{tuple(state[k].shape)} vs model {tuple(v.shape)}{why}",
                "it was written for a different width/num_classes; rebuild with the checkpoint's own settings")
    extra = [k for k in state if k not in own]
    if extra:
        raise LwdeployError(f"checkpoint {file} does not fit {name} {over}: unexpected key {extra[0]!r}",
                            "it was written for another model")
    model.load_state_dict(state)


def prunable_report(names: Iterable[str] | None = None, resolution: int = 64, ratio: float = 0.3) -> dict:
    """{model name: "ok" | reason} over the zoo — what `lwdeploy prune --list` and the sweep test show."""
    from lwdeploy.models import create, list_models

    out = {}
    for name in names or list_models():
        try:
            model = create(name, num_classes=10)
            prune(model, ratio, torch.randn(1, 3, resolution, resolution))
            out[name] = "ok"
        except LwdeployError as e:
            out[name] = str(e)
    return out


def build_from_spec(spec: str, *, num_classes: int | None = None, width: float | None = None,
                    weights: str | Path | None = None) -> tuple[nn.Module, dict]:
    """A zoo name (optionally with a plain state dict) or an lwdeploy checkpoint file → (model, meta).

    meta: {"model": zoo name, "overrides": {...}, "resolution": int | None, "pruning": {...} | None}; what
    `save_checkpoint` needs to write the result back.
    """
    from lwdeploy.models.loader import load_model

    path = Path(spec)
    if path.suffix in (".pt", ".pth") or path.is_file():
        if weights:
            raise LwdeployError("--weights cannot be combined with a checkpoint MODEL", "leave out --weights")
        over = {k: v for k, v in {"num_classes": num_classes, "width": width}.items() if v is not None}
        model, meta = load_checkpoint(path, overrides=over)
        return model, {"model": meta["model"], "overrides": {**meta.get("overrides", {}), **over},
                       "resolution": meta.get("resolution"), "pruning": meta.get("pruning"),
                       "extra": meta.get("extra", {})}
    if ":" in spec:
        raise LwdeployError(f"{spec!r}: pruning checkpoints are written for zoo models only",
                            "use a zoo name (see `lwdeploy models`)")
    model, info = load_model(spec, num_classes=num_classes, width=width, weights=weights)
    over = {k: v for k, v in {"num_classes": num_classes, "width": width}.items() if v is not None}
    return model, {"model": info.name, "overrides": over, "resolution": None, "pruning": None, "extra": {}}
