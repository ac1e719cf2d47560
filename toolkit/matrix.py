"""The deployability matrix: every selected zoo variant × target × precision, exported and verified.

Each model runs in its own worker process, for two reasons: a converter that crashes or leaks cannot take
the sweep down with it, and the worker's peak RSS is the honest memory figure for that model.
Results land as JSON, a markdown table and a self-contained HTML page.
"""

from __future__ import annotations

import html
import json
import multiprocessing as mp
import os
import resource
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from .atomic import write_bytes, write_json
from .errors import LwdeployError

PRECISIONS = ("fp32", "int8")


def default_models() -> list[str]:
    """One variant per architecture family: the first one its family file registers (the paper's base)."""
    from lwdeploy.models.registry import all_entries

    seen: dict[str, str] = {}
    for e in all_entries():
        seen.setdefault(e.info.family, e.info.name)
    return list(seen.values())


def _worker(model: str, targets: list[str], precisions: list[str], out_dir: str, options: dict, result_file: str):
    """Runs in a child process: export `model` to every target × precision, keep going on failures."""
    import torch

    torch.set_num_threads(options.pop("threads", 2))
    from lwdeploy.pipeline import export

    rows = []
    for precision in precisions:
        t0 = time.perf_counter()
        try:
            manifests = export(model, targets, out_dir=out_dir, int8=precision == "int8", keep_going=True, **options)
        except Exception as e:  # the model itself failed to build / calibrate: every cell of this precision fails
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            manifests = [{"artifact": {"target": t}, "error": f"{type(e).__name__}: {msg[:500]}"} for t in targets]
            if not isinstance(e, LwdeployError):
                manifests[0]["traceback"] = traceback.format_exc(limit=6)
        elapsed = time.perf_counter() - t0
        for m in manifests:
            rows.append(_row(model, precision, m, elapsed / max(1, len(manifests))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for r in rows:
        r["peak_rss_mb"] = round(peak_mb)
    Path(result_file).write_text(json.dumps(rows))


def _row(model: str, precision: str, m: dict, elapsed: float) -> dict:
    row = {"model": model, "target": m["artifact"]["target"], "precision": precision, "ok": "error" not in m}
    if not row["ok"]:
        row["error"] = m["error"]
        return row
    ver = m["verification"]
    fid, lat, checks = ver.get("fidelity") or {}, ver.get("latency_ms") or {}, ver.get("checks") or {}
    ops = checks.get("op_histogram") or {}
    row.update({
        "artifact": m["artifact"]["path"], "size_mb": round(m["artifact"]["size_bytes"] / 1e6, 3),
        "latency_ms": lat.get("p50"), "top1_agreement": fid.get("top1_agreement"),
        "max_abs_diff": fid.get("max_abs_diff"), "ran_on_host": ver["ran_on_host"],
        "transpose": checks.get("transpose", ops.get("TRANSPOSE")),
        "quantize": checks.get("quantize", ops.get("QUANTIZE")),
        "partitions": checks.get("delegate_partitions"),
        "export_s": round(sum((m.get("timings_s") or {}).values()), 1),
        **_stage_summary((m.get("timings") or {}).get("convert") or {}),
    })
    return row


def _stage_summary(stages: dict) -> dict:
    """Conversion CPU seconds and the slowest stage (manifest `timings.convert`: stage → {wall_s, cpu_s})."""
    if not stages:
        return {}
    name, slowest = max(stages.items(), key=lambda kv: kv[1].get("cpu_s", 0))
    return {"convert_cpu_s": round(sum(v.get("cpu_s", 0) for v in stages.values()), 1),
            "slowest_stage": f"{name} {slowest.get('cpu_s', 0):.0f}",
            "stage_cpu_s": {k: v.get("cpu_s") for k, v in stages.items()}}


def run_matrix(models: Sequence[str] | None, targets: Sequence[str], precisions: Sequence[str], out_dir: Path,
               options: dict | None = None, on_model: Callable[[str, list[dict]], None] | None = None,
               timeout_s: float = 900) -> dict:
    from lwdeploy.models.registry import get_entry
    from lwdeploy.pipeline import resolve_targets

    targets = resolve_targets(targets)
    for p in precisions:
        if p not in PRECISIONS:
            raise LwdeployError(f"unknown precision {p!r}", f"choose from {', '.join(PRECISIONS)}")
    models = [get_entry(m).info.name for m in (models or default_models())]
    if out_dir.exists() and not out_dir.is_dir():
        raise LwdeployError(f"output path {str(out_dir)!r} is a file", "pass --out with a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    t_start = time.perf_counter()
    for model in models:
        result_file = out_dir / f".{model}.rows.json"
        result_file.unlink(missing_ok=True)
        proc = ctx.Process(target=_worker, args=(model, list(targets), list(precisions), str(out_dir / "artifacts"),
                                                 dict(options or {}), str(result_file)))
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            got = [_failed(model, t, p, f"timed out after {timeout_s:.0f} s") for p in precisions for t in targets]
        elif result_file.exists():
            got = json.loads(result_file.read_text())
            result_file.unlink()
        else:
            got = [_failed(model, t, p, f"worker died (exit code {proc.exitcode})") for p in precisions for t in targets]
        rows.extend(got)
        if on_model:
            on_model(model, got)
        result = _write(rows, models, targets, precisions, out_dir, t_start)  # partial results survive a stop
    return result


def _write(rows: list[dict], models, targets, precisions, out_dir: Path, t_start: float) -> dict:
    summary = {
        "cells": len(rows), "ok": sum(r["ok"] for r in rows),
        "success_rate": round(sum(r["ok"] for r in rows) / max(1, len(rows)), 4),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_mb": max((r.get("peak_rss_mb") or 0 for r in rows), default=0),
        "models": list(models), "models_done": len({r["model"] for r in rows}),
        "targets": list(targets), "precisions": list(precisions),
        "cpu_count": os.cpu_count(),
    }
    result = {"summary": summary, "rows": rows}
    write_json(out_dir / "matrix.json", result)
    write_bytes(out_dir / "matrix.md", to_markdown(result).encode())
    write_bytes(out_dir / "matrix.html", to_html(result).encode())
    return result


def _failed(model: str, target: str, precision: str, why: str) -> dict:
    return {"model": model, "target": target, "precision": precision, "ok": False, "error": why}


COLUMNS = [("model", "model"), ("target", "target"), ("precision", "prec"), ("ok", "ok"), ("size_mb", "MB"),
           ("latency_ms", "host ms"), ("top1_agreement", "top-1 agree"), ("transpose", "TRANSPOSE"),
           ("quantize", "QUANTIZE"), ("partitions", "partitions"), ("export_s", "export s"),
           ("convert_cpu_s", "convert CPU s"), ("slowest_stage", "slowest stage (CPU s)")]


def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "ok":
        return "✅" if v else "❌"
    if key == "top1_agreement":
        return f"{v:.0%}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def to_markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["# lwdeploy deployability matrix",
             "",
             f"Generated by `lwdeploy matrix` — {s['ok']}/{s['cells']} cells succeed ({s['success_rate']:.1%}); "
             f"wall {s['wall_s'] / 60:.1f} min on {s['cpu_count']} cores; peak worker RSS {s['peak_rss_mb']} MB. "
             "Host latency: LiteRT interpreter (XNNPACK) / ExecuTorch runtime on this machine; Core ML is checked "
             "structurally on Linux (no latency).",
             "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    failures = [r for r in result["rows"] if not r["ok"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- **{r['model']} → {r['target']} {r['precision']}**: {r['error']}" for r in failures]
    return "\n".join(lines) + "\n"


def to_html(result: dict) -> str:
    s = result["summary"]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = []
    for r in result["rows"]:
        cls = "ok" if r["ok"] else "bad"
        cells = "".join(f"<td>{html.escape(_fmt(k, r.get(k)))}</td>" for k, _ in COLUMNS)
        err = f'<tr class="err"><td colspan="{len(COLUMNS)}">{html.escape(r["error"])}</td></tr>' if not r["ok"] else ""
        body.append(f'<tr class="{cls}">{cells}</tr>{err}')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lwdeploy matrix</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} h1{{font-size:20px}}
table{{border-collapse:collapse}} th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}
th{{background:#f4f4f4;position:sticky;top:0}} td:first-child,td:nth-child(2),td:nth-child(3){{text-align:left}}
tr.bad td{{background:#fff1f0}} tr.err td{{text-align:left;color:#a8071a;font-size:12px}}
.summary{{margin:1em 0;padding:.6em 1em;background:#f6ffed;border:1px solid #b7eb8f;display:inline-block}}
</style></head><body>
<h1>lwdeploy deployability matrix</h1>
<div class="summary">{s['ok']}/{s['cells']} cells succeed ({s['success_rate']:.1%}) · wall {s['wall_s'] / 60:.1f} min ·
peak worker RSS {s['peak_rss_mb']} MB · targets {', '.join(s['targets'])} · precisions {', '.join(s['precisions'])}</div>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
</body></html>
"""
