"""The report: schema validation, percentiles, and the two numbers that say whether a report can be trusted."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import LwdeployError

SCHEMA_VERSION = "1.0"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(resources.files("lwdeploy").joinpath("schemas/report.schema.json").read_text())


def validate_report(report: dict) -> dict:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(load_schema()).iter_errors(report), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise LwdeployError(f"report does not match the schema at {where}: {e.message}",
                            f"{len(errors)} problem(s); schema: lwdeploy/schemas/report.schema.json")
    return report


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise LwdeployError(f"no report at {path}", "run `lwdeploy profile ARTIFACT --out REPORT.json` first") from None
    except json.JSONDecodeError as e:
        raise LwdeployError(f"{path} is not JSON ({e})", "is it a complete report?") from None
    return validate_report(report)


def percentiles(samples) -> dict:
    """{p10, p50, p90} with numpy's linear interpolation (the native runner uses the same rule)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {"p10": 0.0, "p50": 0.0, "p90": 0.0}

    def at(q: float) -> float:
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"p10": at(0.1), "p50": at(0.5), "p90": at(0.9)}


def coverage(report: dict) -> dict:
    """How far the layers explain the run: layer-sum / total (median run) and the time share with a module."""
    layer_sum = sum(l["ms"]["p50"] for l in report["layers"])
    total = report["total_ms"]["p50"]
    sum_ratio = (report.get("layers_sum_ms", {}).get("p50", layer_sum) / total) if total > 0 else 0.0
    named = sum(l["ms"]["p50"] for l in report["layers"] if l.get("module"))
    return {
        "layers_over_total": sum_ratio,
        "named_fraction": named / layer_sum if layer_sum > 0 else 0.0,
        "layers": len(report["layers"]),
    }


def by_module(report: dict, depth: int = 2) -> list[tuple[str, float]]:
    """Layer p50 times summed per module prefix of `depth` dotted parts, largest first."""
    groups: dict[str, float] = {}
    for layer in report["layers"]:
        module = layer.get("module")
        key = ".".join(module.split(".")[:depth]) if module else "(no module)"
        groups[key] = groups.get(key, 0.0) + layer["ms"]["p50"]
    return sorted(groups.items(), key=lambda kv: -kv[1])


def kernel_class(layer: dict) -> str:
    """What ran for a layer, without data types or layouts: XNNPACK's 'Convolution (NHWC, QC8) DWConv' and
    'Convolution (NHWC, F32) DWConv' are both 'Convolution DWConv', so float and int8 reports line up."""
    names = layer.get("kernels") or [layer.get("op_type") or "?"]
    return " + ".join(dict.fromkeys(re.sub(r"\s*\([^)]*\)", "", n).strip() or n for n in names))


def by_kernel(report: dict) -> list[tuple[str, float]]:
    """Layer p50 times summed per kernel class (kernel_class), largest first."""
    groups: dict[str, float] = {}
    for layer in report["layers"]:
        key = kernel_class(layer)
        groups[key] = groups.get(key, 0.0) + layer["ms"]["p50"]
    return sorted(groups.items(), key=lambda kv: -kv[1])
