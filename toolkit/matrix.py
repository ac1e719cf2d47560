"""The deployability matrix: every selected zoo variant × target × precision, exported and verified.

Each model runs in its own worker process, for two reasons: a converter that crashes or leaks cannot take
the sweep down with it, and the worker's peak memory is the honest figure for that model. Workers are forked
from a server that imported the converter stacks once (worker_context). Several workers may run at once
(--jobs); the run's peak memory is then sampled over the whole process tree.
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
    session: dict = {}  # the float model, crops and reference logits: built once for both precisions
    for precision in precisions:
        t0 = time.perf_counter()
        try:
            manifests = export(model, targets, out_dir=out_dir, int8=precision == "int8", keep_going=True,
                               session=session, **options)
        except Exception as e:  # the model itself failed to build / calibrate: every cell of this precision fails
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            manifests = [{"artifact": {"target": t}, "error": f"{type(e).__name__}: {msg[:500]}"} for t in targets]
            if not isinstance(e, LwdeployError):
                manifests[0]["traceback"] = traceback.format_exc(limit=6)
        elapsed = time.perf_counter() - t0
        for m in manifests:
            rows.append(_row(model, precision, m, elapsed / max(1, len(manifests))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # its conversion processes: see TreeMemory
    for r in rows:
        r["peak_rss_mb"] = round(peak_mb)
        r["torch_threads"] = torch.get_num_threads()
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
               timeout_s: float = 900, jobs: int = 1, memory_mb: float | None = None) -> dict:
    """Export every model in its own worker process, up to `jobs` at once.

    `memory_mb`: a further worker starts only while the whole process tree's PSS plus the peak expected of
    that model (expected_peak_mb) stays under it (a guard, not a hard cap: the summary reports the sampled peak).
    With several workers each converts its targets sequentially (the export pipeline's own conversion
    processes would oversubscribe the cores).
    """
    from lwdeploy.models.registry import get_entry
    from lwdeploy.pipeline import resolve_targets

    targets = resolve_targets(targets)
    for p in precisions:
        if p not in PRECISIONS:
            raise LwdeployError(f"unknown precision {p!r}", f"choose from {', '.join(PRECISIONS)}")
    if jobs < 1:
        raise LwdeployError(f"--jobs {jobs} must be at least 1", "e.g. --jobs 2 on a 2-core machine")
    models = [get_entry(m).info.name for m in (models or default_models())]
    if out_dir.exists() and not out_dir.is_dir():
        raise LwdeployError(f"output path {str(out_dir)!r} is a file", "pass --out with a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    if jobs > 1:
        options.setdefault("jobs", 1)
        # torch threads per worker: its cores' share. Two workers × 2 threads on 2 cores made each torch op
        # (calibration, reference and bias-correction forwards) fight the other worker: a 2-model matrix at
        # --jobs 2 took 139 s with 2 threads, 127 s with 1 (same artifacts; runtime threads are unchanged)
        options.setdefault("threads", max(1, (os.cpu_count() or 1) // jobs))
    ctx = worker_context()
    done: dict[str, list[dict]] = {}
    running: dict[str, tuple] = {}
    sizes = graph_sizes(models)
    pending = sorted(models, key=lambda m: -sizes[m])  # largest first: the longest export never runs last, alone
    heavy = heavy_models(sizes)
    t_start = time.perf_counter()
    memory = TreeMemory()
    memory.start()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                model = next_model(pending, running, heavy)
                if model is None:  # only heavy models left and one is running: wait for it
                    break
                if not _room(memory, expected_peak_mb(model, done, heavy, memory_mb, jobs), running, memory_mb):
                    break
                pending.remove(model)
                result_file = out_dir / f".{model}.rows.json"
                result_file.unlink(missing_ok=True)
                proc = ctx.Process(target=_worker, args=(model, list(targets), list(precisions),
                                                         str(out_dir / "artifacts"), dict(options), str(result_file)))
                proc.start()
                memory.roots.add(proc.pid)
                running[model] = (proc, time.perf_counter(), result_file)
            time.sleep(0.25)
            for model, (proc, started, result_file) in list(running.items()):
                if proc.is_alive() and time.perf_counter() - started < timeout_s:
                    continue
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                    got = [_failed(model, t, p, f"timed out after {timeout_s:.0f} s") for p in precisions for t in targets]
                elif result_file.exists():
                    proc.join()
                    got = json.loads(result_file.read_text())
                    result_file.unlink()
                    for r in got:
                        r["peak_pss_mb"] = round(memory.child_peak_mb.get(proc.pid, 0)) or None
                else:
                    got = [_failed(model, t, p, f"worker died (exit code {proc.exitcode})")
                           for p in precisions for t in targets]
                del running[model]
                done[model] = got
                if on_model:
                    on_model(model, got)
                rows = [r for m in models if m in done for r in done[m]]
                _write(rows, models, targets, precisions, out_dir, t_start, memory, jobs)  # partial results survive a stop
    finally:
        memory.stop()
        for proc, _, _ in running.values():
            proc.kill()
    rows = [r for m in models if m in done for r in done[m]]
    return _write(rows, models, targets, precisions, out_dir, t_start, memory, jobs)


# What a worker imports before its first conversion: ~8 CPU s and ~700 MB in a fresh interpreter (measured
# here: torch 1.0, executorch 2.8, litert-torch 0.9, coremltools 1.7 CPU s).
WORKER_PRELOAD = ("torch", "executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner",
                  "litert_torch", "coremltools", "ai_edge_litert.interpreter", "lwdeploy.pipeline",
                  "lwdeploy.quantization.pt2e", "lwdeploy.converters.tflite", "lwdeploy.converters.executorch",
                  "lwdeploy.converters.coreml")


def preload_worker_modules() -> None:
    """Runs once in the fork server: import what every worker needs, skipping what is not installed."""
    import importlib

    for name in WORKER_PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional converter that is missing or broken: its worker reports it
            pass


def worker_context():
    """Workers are forked from a server process that imported the converter stacks once
    (preload_worker_modules), so each starts with those pages shared copy-on-write instead of paying the
    imports again; still one process per model. The server only imports: it runs no tensor op, so no
    intra-op thread pool or runtime state is cut in half by the fork (the imports do start two idle native
    threads, as in DataLoader workers forked after `import torch`). Spawn where there is no fork server."""
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["lwdeploy.matrix_preload"])
    return ctx


def graph_sizes(models: Sequence[str]) -> dict[str, int]:
    """Tensor ops in one forward per model, counted on the "meta" device (shapes only, no weights or math;
    ~0.1–0.4 s a model): the size of the graph every converter walks. Export time follows it at 0.2–0.45 s
    per op in the default matrix (NASNet-A: 1096 ops, 408 s; MobileNetV2: 205 ops, 62 s). Counting leaf
    modules instead missed the attention and shift-max math that has no module of its own: EdgeViT, MicroNet
    and MobileViT (145–154 s) ranked with the 40-s models, started late and ran last, alone."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from lwdeploy.models import create
    from lwdeploy.models.registry import get_entry

    class _Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    sizes = {}
    for name in models:
        try:
            res = get_entry(name).info.resolution
            counter = _Count()
            with torch.device("meta"), torch.no_grad():
                net = create(name).eval()
                x = torch.empty(1, 3, res, res)
                with counter:
                    net(x)
            sizes[name] = counter.ops
        except Exception:  # cannot run on "meta": unknown size, scheduled last (its worker reports why)
            sizes[name] = 0
    return sizes


def heavy_models(sizes: dict[str, int]) -> set[str]:
    """Models with at least twice the median graph (the three NAS cells): their workers peak at 1.5–1.7 GB RSS
    (the others at 1.05–1.5 GB), so two of them plus this process would pass 3 GB. The scheduler never runs
    two at the same time."""
    if len(sizes) < 2:
        return set()
    ordered = sorted(sizes.values())
    median = ordered[len(ordered) // 2]
    return {m for m, n in sizes.items() if n >= 2 * median}


def next_model(pending: Sequence[str], running, heavy: set[str]) -> str | None:
    """The first pending model that may start now: a heavy one only while no other heavy one runs."""
    return next((m for m in pending if not (m in heavy and heavy & set(running))), None)


def expected_peak_mb(model: str, done: dict, heavy: set[str], memory_mb: float | None, jobs: int = 1) -> float:
    """What `model`'s worker is expected to take at its peak: the largest peak a finished worker of the same
    kind reached (heavy NAS cells 1.3–1.55 GB PSS, the others 0.6–1.0 GB in the default matrix). Taking the
    largest of ANY kind kept every light model waiting while a NAS cell converted once a NAS cell had
    finished: 859 of 2204 s with one worker. No finished worker of its kind: the largest of any kind; none at
    all: a fair share of the budget."""
    def peaks(same_kind: bool) -> list[float]:
        return [r.get("peak_pss_mb") or r.get("peak_rss_mb") or 0 for m, rows in done.items()
                if not same_kind or (m in heavy) == (model in heavy) for r in rows]

    found = peaks(True) or peaks(False)
    return max(found) if found else (memory_mb or 0) / max(jobs, 1)


def _room(memory: "TreeMemory", expected_mb: float, running: dict, memory_mb: float | None) -> bool:
    if not running or not memory_mb:
        return True
    return memory.latest_mb + expected_mb <= memory_mb  # the sampler's last reading: a fresh one costs ~60 ms


class TreeMemory:
    """Memory of this process and all its descendants together, sampled from /proc once a second.

    `peak_mb` is the peak of the summed proportional set size (PSS, /proc/PID/smaps_rollup): a page shared by
    several processes counts once in total. That is what the run takes from the machine; summed RSS counts
    the ~250 MB of torch/ExecuTorch/LiteRT libraries every worker maps once per process (`peak_rss_sum_mb`
    keeps that figure too). Reading smaps_rollup walks the page tables: ~21 ms of CPU for a 1.2 GB process, so
    sampling three workers every 0.2 s took ~0.3 of a core from the conversions; once a second still catches the
    peaks (the memory-heavy conversion stages last seconds) for ~0.06 of a core. Without smaps_rollup
    (Linux < 4.14) PSS falls back to RSS. Written by hand because psutil is not a dependency; on a system
    without /proc the peak is this process tree's largest single ru_maxrss (a lower bound).
    """

    def __init__(self, interval_s: float = 1.0):
        import threading

        self.interval_s, self.sampled = interval_s, os.path.isdir("/proc/self")
        self.peak_mb = self.peak_rss_sum_mb = self.latest_mb = 0.0
        self.child_peak_mb: dict[int, float] = {}  # worker pid → peak PSS of its process tree
        self.roots: set[int] = set()  # worker pids: each gets its own peak, also when not a direct child
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        if not self.sampled:
            self.peak_mb = self.peak_rss_sum_mb = max(resource.getrusage(w).ru_maxrss / 1024
                                                      for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    def current_mb(self) -> float:
        """PSS of the process tree now, MB."""
        return self.sample()[0]

    def sample(self) -> tuple[float, float]:
        """(PSS, RSS) summed over this process tree, MB."""
        if not self.sampled:
            return 0.0, 0.0
        children: dict[int, list[int]] = {}
        rss_pages: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # the process ended between listdir and open
                continue
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: parent pid
            rss_pages[pid] = int(fields[21])                      # fields[21]: resident pages
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        pss = rss = 0.0
        me = os.getpid()
        stack = [(me, None)]
        per_child: dict[int, float] = {}
        while stack:
            pid, child = stack.pop()
            rss += rss_pages.get(pid, 0) * page_mb
            p = _pss_mb(pid, rss_pages.get(pid, 0) * page_mb)
            pss += p
            if child is not None:
                per_child[child] = per_child.get(child, 0.0) + p
            stack.extend((c, c if pid == me or c in self.roots else child) for c in children.get(pid, ()))
        for child, p in per_child.items():  # each worker's own peak, with its conversion processes
            self.child_peak_mb[child] = max(self.child_peak_mb.get(child, 0.0), p)
        return pss, rss

    def _run(self):
        while not self._stop.is_set():
            pss, rss = self.sample()
            self.latest_mb = pss
            self.peak_mb, self.peak_rss_sum_mb = max(self.peak_mb, pss), max(self.peak_rss_sum_mb, rss)
            self._stop.wait(self.interval_s)


def _pss_mb(pid: int, rss_mb: float) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # no smaps_rollup (old kernel) or the process ended: its RSS
        pass
    return rss_mb


def _write(rows: list[dict], models, targets, precisions, out_dir: Path, t_start: float,
           memory: TreeMemory | None = None, jobs: int = 1) -> dict:
    worker_peak = max((r.get("peak_rss_mb") or 0 for r in rows), default=0)
    summary = {
        "cells": len(rows), "ok": sum(r["ok"] for r in rows),
        "success_rate": round(sum(r["ok"] for r in rows) / max(1, len(rows)), 4),
        "wall_s": round(time.perf_counter() - t_start, 1), "jobs": jobs,
        # all processes of the run at once (workers, their conversion processes, this one)
        "peak_memory_mb": round(memory.peak_mb if memory else 0) or worker_peak,   # PSS: shared pages once
        "peak_rss_mb": round(memory.peak_rss_sum_mb if memory else 0) or worker_peak,  # RSS summed per process
        "peak_worker_rss_mb": worker_peak,
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
             f"wall {s['wall_s'] / 60:.1f} min on {s['cpu_count']} cores, {s.get('jobs', 1)} model(s) at a time; peak memory "
             f"{s.get('peak_memory_mb', s['peak_rss_mb'])} MB (all processes together, shared library pages counted "
             f"once; RSS summed per process {s['peak_rss_mb']} MB; largest worker {s.get('peak_worker_rss_mb', '—')} MB). "
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
peak memory {s.get('peak_memory_mb', s['peak_rss_mb'])} MB · {s.get('jobs', 1)} at a time · targets {', '.join(s['targets'])} · precisions {', '.join(s['precisions'])}</div>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
</body></html>
"""
