"""`lwdeploy profile ARTIFACT` — per-layer latency report (JSON) and its HTML page."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("profile")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", default="host", show_default=True, help="'host', or an adb serial (see `adb devices`).")
@click.option("--runs", default=50, show_default=True, type=int, help="Measured runs.")
@click.option("--warmup", default=10, show_default=True, type=int, help="Warm-up runs (not measured).")
@click.option("--threads", default=1, show_default=True, type=int, help="CPU threads for the runtime.")
@click.option("--etrecord", type=click.Path(path_type=Path), default=None,
              help="ETRecord for a .pte (default: ARTIFACT with .etrecord suffix).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Report JSON (default: ARTIFACT.report.json); the HTML page goes next to it.")
@click.option("--top", default=20, show_default=True, help="Modules in the HTML bar chart.")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON instead of a summary.")
def profile(artifact, device, runs, warmup, threads, etrecord, out, top, as_json):
    """Profile ARTIFACT (.tflite, .pte, .mlpackage) per layer; layers are named by PyTorch module."""
    import json

    from rich.console import Console

    from ..atomic import write_bytes, write_json
    from ..profiling.html import report_html
    from ..profiling.profile import profile_artifact
    from ..profiling.report import by_module, coverage

    from ..quiet import captured_native_output, terminal_stream

    # the runtimes and their imports (torchao, ExecuTorch devtools) print to fds 1/2 and warn per op: captured
    # as for export (LWDEPLOY_VERBOSE=1 shows them); the console writes to a duplicate of the real stderr
    console = Console(file=terminal_stream())
    with console.status(f"profiling {artifact.name} on {device} ({warmup} warm-up + {runs} runs)…"), \
            captured_native_output():
        report = profile_artifact(artifact, device=device, runs=runs, warmup=warmup, threads=threads,
                                  etrecord=etrecord)
    out = out or artifact.with_name(artifact.name + ".report.json")
    write_json(out, report)
    page = out.with_suffix(".html")
    write_bytes(page, report_html(report, top=top).encode())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    cov = coverage(report)
    kind = "ESTIMATE " if report.get("kind") == "estimate" else ""
    click.echo(f"{kind}total p50 {report['total_ms']['p50']:.3f} ms (p10 {report['total_ms']['p10']:.3f}, "
               f"p90 {report['total_ms']['p90']:.3f}) on {report['device']['model']} / {report['device']['runtime']}")
    click.echo(f"layers: {cov['layers']}, layer sum / total = {cov['layers_over_total'] * 100:.1f}%, "
               f"time in named PyTorch modules = {cov['named_fraction'] * 100:.1f}%")
    for mod, ms in by_module(report, depth=2)[:8]:
        click.echo(f"  {ms:9.3f} ms  {mod}")
    click.echo(f"report: {out}\npage:   {page}")
