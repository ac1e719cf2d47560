"""`lwdeploy matrix` — which runtime takes which architecture, at what cost."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("models", nargs=-1)
@click.option("--targets", default="all", show_default=True, help="Comma-separated: tflite,executorch,coreml or all.")
@click.option("--precisions", default="fp32,int8", show_default=True, help="Comma-separated: fp32,int8.")
@click.option("--out", "out_dir", default="lwdeploy-out/matrix", show_default=True, type=click.Path())
@click.option("--resolution", "-r", type=int, help="Override every model's input size (default: each paper's).")
@click.option("--calib-samples", default=16, show_default=True)
@click.option("--heldout-samples", default=16, show_default=True)
@click.option("--timeout", "timeout_s", default=900, show_default=True, help="Seconds per model before giving up.")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="Models exported at once (each in its own process, converting its targets one by one).")
@click.option("--max-memory", "memory_mb", default=3000, show_default=True, type=click.IntRange(min=1),
              help="MB: with --jobs > 1, start another model only while all processes (PSS) plus the largest "
                   "peak seen for a model of its kind fit; graphs twice the median size (NAS cells) are one "
                   "kind and never convert two at once.")
def matrix(models, targets, precisions, out_dir, resolution, calib_samples, heldout_samples, timeout_s, jobs,
           memory_mb):
    """Export MODELS (default: one variant per zoo family) to every target × precision and verify each.

    Writes matrix.json, matrix.md and matrix.html in --out. Failures are recorded (operator, module,
    target), not fatal.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lwdeploy.matrix import default_models, run_matrix
    from lwdeploy.pipeline import resolve_targets

    console = Console(stderr=True)
    names = list(models) or default_models()
    target_list = resolve_targets([t.strip() for t in targets.split(",") if t.strip()])
    precision_list = [p.strip() for p in precisions.split(",") if p.strip()]
    options = {"calib_samples": calib_samples, "heldout_samples": heldout_samples, "resolution": resolution}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("matrix", total=len(names))

        def on_model(model, rows):
            ok = sum(r["ok"] for r in rows)
            bar.console.log(f"{model}: {ok}/{len(rows)} cells ok"
                            + "".join(f"\n  ✗ {r['target']} {r['precision']}: {r['error'][:160]}"
                                      for r in rows if not r["ok"]))
            bar.advance(task)

        result = run_matrix(names, target_list, precision_list, Path(out_dir), options, on_model, timeout_s,
                            jobs=jobs, memory_mb=memory_mb)
    s = result["summary"]
    console.print(f"[bold]{s['ok']}/{s['cells']}[/] cells succeed ({s['success_rate']:.1%}) in {s['wall_s'] / 60:.1f} min, "
                  f"peak memory {s['peak_memory_mb']} MB — {Path(out_dir) / 'matrix.md'}, matrix.html, matrix.json")
