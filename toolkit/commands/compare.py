"""`lwdeploy compare A.json B.json …` — runtimes or devices side by side (table + HTML)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--depth", default=2, show_default=True, help="Group layers by this many module path parts.")
@click.option("--by", type=click.Choice(["module", "kernel"]), default="module", show_default=True,
              help="Rows per PyTorch module, or per runtime kernel class with data types dropped (float and "
                   "int8 reports line up: 'Convolution DWConv', 'Fully Connected GEMM', 'Copy', …).")
@click.option("--top", default=20, show_default=True, help="Modules shown.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), default=None,
              help="Write the comparison page here (default: compare.html next to the first report).")
def compare(reports, depth, by, top, html_out):
    """Put per-layer reports side by side: total and per-module (or per-kernel-class) p50 ms."""
    from ..atomic import write_bytes
    from ..errors import LwdeployError
    from ..profiling.html import compare_html, compare_rows
    from ..profiling.report import load_report

    if len(reports) < 2:
        raise LwdeployError("compare needs at least two reports", "lwdeploy compare A.json B.json")
    loaded = [load_report(p) for p in reports]
    names = [p.stem for p in reports]
    labels, rows = compare_rows(loaded, depth, by)
    head = "module" if by == "module" else "kernel class"
    width = max(len(head), *(len(m) for m, _ in rows[: top + 1]))
    click.echo(f"{head:<{width}}  " + "  ".join(f"{n[:18]:>18}" for n in names))
    click.echo(f"{'':<{width}}  " + "  ".join(f"{l[:18]:>18}" for l in labels))
    for mod, vals in rows[: top + 1]:
        click.echo(f"{mod:<{width}}  " + "  ".join(f"{v:>18.3f}" if v is not None else f"{'—':>18}" for v in vals))
    page = html_out or reports[0].with_name("compare.html")
    write_bytes(page, compare_html(loaded, names, depth=depth, top=top, by=by).encode())
    click.echo(f"page: {page}")
