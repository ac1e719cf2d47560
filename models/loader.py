"""Resolve a MODEL argument: a zoo name, `path/file.py:ClassOrFactory`, `timm:NAME` or `torchvision:NAME`,
optionally with a state-dict checkpoint. Every failure is one clear LwdeployError."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from lwdeploy.errors import LwdeployError

from .complexity import count_params
from .registry import ModelInfo, get_entry

# user model files imported so far, module name → path: a spawned worker process re-imports them before it
# unpickles a model whose classes live there (`import_user_modules`)
_USER_MODULES: dict[str, str] = {}


def load_model(spec: str, *, num_classes: int | None = None, width: float | None = None,
               weights: str | Path | None = None, pretrained: bool = False,
               resolution: int | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by `spec` in eval mode and return it with its ModelInfo."""
    if spec.startswith(("timm:", "torchvision:")):
        model, info = _from_hub_library(spec, num_classes, pretrained, resolution)
    elif ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        model, info = _from_file(spec, num_classes, width, resolution)
    else:
        entry = get_entry(spec)
        kwargs = {}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if width is not None:
            if "width" not in inspect.signature(entry.factory).parameters and not _accepts_kwargs(entry.factory):
                raise LwdeployError(f"{entry.info.name} has no width multiplier", "leave out --width")
            kwargs["width"] = width
        if resolution is not None and "input-size-bound" in entry.info.tags:
            kwargs["resolution"] = resolution  # e.g. DiCENet's dimension-wise convs are built for one size
        try:
            model = entry.factory(**kwargs)
        except (ValueError, TypeError) as e:  # a family's own check on its arguments (sizes, widths)
            raise LwdeployError(f"{entry.info.name} cannot be built with {kwargs}: {e}",
                                "change --width/--resolution/--num-classes") from None
        info = entry.info
        if num_classes is not None and num_classes != info.num_classes:
            info = _replace(info, num_classes=num_classes)
        if pretrained:
            if num_classes not in (None, info.num_classes) or width not in (None, 1.0):
                raise LwdeployError("--pretrained weights exist only for the default width and 1000 classes",
                                    "drop --width/--num-classes, or fine-tune from the pretrained model")
            from .pretrained import load_pretrained

            load_pretrained(info, model)
    if weights:
        load_weights(model, weights)
    return model.eval(), info


def safe_load(path: str | Path, hint: str = "pass a file written by torch.save(model.state_dict(), path)"):
    """torch.load with weights_only=True: tensors and plain containers only, no code runs. One-line errors
    that tell a pickled-object checkpoint (refused) from a damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise LwdeployError(f"checkpoint {str(path)!r} does not exist", hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:  # a pickled class/function reference; anything else is a damaged or foreign file
            raise LwdeployError(
                f"checkpoint {path.name} holds pickled Python objects ({found.group(1)}), which lwdeploy will not "
                "execute (it loads with weights_only=True)",
                "re-save it as a plain state dict: torch.save(model.state_dict(), path)") from None
        raise LwdeployError(f"cannot read checkpoint {path.name}: not a torch.save file", hint) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise LwdeployError(f"cannot read checkpoint {path.name}: {str(e).splitlines()[0][:160]}", hint) from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (weights_only=True) and unwrap the usual {"state_dict": …} containers."""
    path = Path(path)
    obj = safe_load(path)
    for key in ("state_dict", "model_state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LwdeployError(f"checkpoint {path.name} is not a state dict of tensors",
                            "save it with torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path) -> None:
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape))
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k, got, want = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch(es), first {k}: checkpoint {got} vs model {want}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]}")
        raise LwdeployError(f"checkpoint {Path(path).name} does not fit the model: " + "; ".join(parts),
                            "check the model name, --width and --num-classes the checkpoint was trained with")
    model.load_state_dict(state)


def _accepts_kwargs(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _replace(info: ModelInfo, **changes) -> ModelInfo:
    from dataclasses import replace

    return replace(info, **changes)


def _custom_info(name: str, family: str, model: nn.Module, resolution: int | None, num_classes: int) -> ModelInfo:
    return ModelInfo(name=name, family=family, year=0, paper="user-provided", resolution=resolution or 224,
                     params_m=round(count_params(model) / 1e6, 3), macs_m=0.0, top1=None, num_classes=num_classes,
                     note="not from the zoo: no paper metadata")


def _from_file(spec: str, num_classes, width, resolution) -> tuple[nn.Module, ModelInfo]:
    file, attr = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise LwdeployError(f"model file {file!r} does not exist", "use path/to/file.py:ClassOrFactory")
    mod_name = f"lwdeploy_user_{path.stem}"
    try:
        module = _import_file(mod_name, path)
    except Exception as e:
        raise LwdeployError(f"importing {file} failed: {type(e).__name__}: {e}", "fix the file so it imports") from None
    if not hasattr(module, attr):
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module)
                 and v.__module__ == mod_name]
        raise LwdeployError(f"{file} has no {attr!r}", f"nn.Module classes there: {', '.join(names) or 'none'}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise LwdeployError(f"{file}:{attr} is not a class or function", "name an nn.Module class or a factory")
    kwargs = {}
    params = inspect.signature(factory).parameters if callable(factory) else {}
    if num_classes is not None:
        if "num_classes" not in params and not _accepts_kwargs(factory):
            raise LwdeployError(f"{file}:{attr} takes no num_classes argument", "leave out --num-classes")
        kwargs["num_classes"] = num_classes
    if width is not None:
        if "width" not in params and not _accepts_kwargs(factory):
            raise LwdeployError(f"{file}:{attr} takes no width argument", "leave out --width")
        kwargs["width"] = width
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise LwdeployError(f"{file}:{attr}(**{kwargs}) failed: {type(e).__name__}: {e}",
                            "it must build with no required arguments") from None
    if not isinstance(model, nn.Module):
        raise LwdeployError(f"{file}:{attr} returned {type(model).__name__}, not a torch.nn.Module",
                            "point at an nn.Module class or a function returning one")
    n_out = num_classes or _guess_classes(model)
    return model, _custom_info(attr, "custom", model, resolution, n_out)


def _import_file(mod_name: str, path: Path):
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    _USER_MODULES[mod_name] = str(path.resolve())
    return module


def user_modules() -> dict[str, str]:
    """The user model files this process imported (module name → path), for `import_user_modules`."""
    return dict(_USER_MODULES)


def import_user_modules(modules: dict[str, str]) -> None:
    """Process-pool initializer: import the parent's user model files under the same module names, so models
    built from them unpickle in a spawned process."""
    for mod_name, path in modules.items():
        if mod_name not in sys.modules:
            _import_file(mod_name, Path(path))


def _from_hub_library(spec: str, num_classes, pretrained, resolution) -> tuple[nn.Module, ModelInfo]:
    lib, name = spec.split(":", 1)
    try:
        module = importlib.import_module(lib)
    except Exception as e:  # torchvision/timm fail to import beside CPU torch here; say so plainly
        raise LwdeployError(f"{lib} cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                            f"install a {lib} build that matches your torch, or use a zoo name") from None
    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        if lib == "timm":
            model = module.create_model(name, pretrained=pretrained, **kwargs)
        else:
            model = module.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except Exception as e:
        raise LwdeployError(f"{lib} cannot build {name!r}: {e}", f"check the name against {lib}'s model list") from None
    return model, _custom_info(name, lib, model, resolution, num_classes or _guess_classes(model))


def _guess_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 1000
