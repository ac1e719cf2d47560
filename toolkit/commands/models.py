"""`lwdeploy models [NAME]` — the zoo: paper metadata, and our own parameter/MAC counts when asked."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("name", required=False)
@click.option("--family", "-f", help="Only this family (substring, case-insensitive).")
@click.option("--count", is_flag=True, help="Also count params and MACs of our build (shape-only, a few seconds).")
@click.option("--json", "as_json", is_flag=True, help="All metadata as JSON, with counted params/MACs.")
@click.option("--markdown", is_flag=True, help="The README zoo table (GitHub markdown), with counted numbers.")
def models(name, family, count, as_json, markdown):
    """List the zoo, or show one variant in detail (NAME, e.g. mobilenet_v3_large_100 or ghostnet).

    Paper columns are the authors' numbers; 'ours' columns are counted on our build at the paper's
    resolution (conv + linear multiply-adds, attention matmuls included).
    """
    from lwdeploy.models.registry import all_entries, get_entry

    if name:
        entries = [get_entry(name)]
    else:
        entries = [e for e in all_entries() if not family or family.lower() in e.info.family.lower()]
        if not entries:
            from lwdeploy.errors import LwdeployError

            raise LwdeployError(f"no family matches {family!r}", "run `lwdeploy models` to see the families")
    counted = _count(entries) if (count or as_json or markdown or name) else {}
    rows = [_row(e, counted.get(e.info.name)) for e in entries]
    if as_json:
        click.echo(json.dumps(rows[0] if name else rows, indent=2))
    elif markdown:
        click.echo(markdown_table(rows))
    elif name:
        _print_detail(rows[0], entries[0])
    else:
        _print_table(rows, counted=bool(counted))


def _count(entries) -> dict[str, tuple[int, int]]:
    from rich.progress import Progress

    from lwdeploy.models.complexity import count_on_meta

    out = {}
    with Progress(transient=True, console=_console()) as progress:
        task = progress.add_task("counting params and MACs", total=len(entries))
        for e in entries:
            out[e.info.name] = count_on_meta(e.factory, e.info.resolution)
            progress.advance(task)
    return out


def _row(entry, counted: tuple[int, int] | None) -> dict:
    from lwdeploy.models.pretrained import has_pretrained

    row = entry.info.to_json()
    row["has_pretrained"] = has_pretrained(entry.info.name)
    if counted:
        row["params_m_counted"] = round(counted[0] / 1e6, 3)
        row["macs_m_counted"] = round(counted[1] / 1e6, 1)
    return row


def _fmt(v, digits=1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _print_table(rows: list[dict], counted: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lwdeploy zoo — {len(rows)} variants", title_justify="left")
    cols = ["name", "family", "year", "params M"] + (["ours"] if counted else [])
    cols += ["MACs M"] + (["ours"] if counted else []) + ["top-1", "res"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("name", "family") else "right", no_wrap=c == "name")
    for r in rows:
        cells = [r["name"] + (" *" if r["has_pretrained"] else ""), r["family"], str(r["year"]),
                 _fmt(r["params_m"], 2)]
        if counted:
            cells.append(_fmt(r.get("params_m_counted"), 2))
        cells.append(_fmt(r["macs_m"], 0))
        if counted:
            cells.append(_fmt(r.get("macs_m_counted"), 0))
        cells += [_fmt(r["top1"]), str(r["resolution"])]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print("params/MACs/top-1: the paper's; 'ours': counted on our build at the paper's resolution. "
                  "* real ImageNet weights (--pretrained)." + ("" if counted else " --count adds our counts."))


def _print_detail(r: dict, entry) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, title=r["name"], title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    skip = {"name", "tags"}
    for k, v in r.items():
        if k in skip or v in ("", None):
            continue
        table.add_row(k, ", ".join(str(x) for x in v) if isinstance(v, list) else str(v))
    Console().print(table)


def markdown_table(rows: list[dict]) -> str:
    """The README zoo table. Counted columns appear when the rows carry them."""
    head = ["Model", "Family", "Year", "Params M (paper / ours)", "MACs M (paper / ours)", "Top-1 %", "Input",
            "Note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        params = f"{_fmt(r['params_m'], 2)} / {_fmt(r.get('params_m_counted'), 2)}"
        macs = f"{_fmt(r['macs_m'], 0)} / {_fmt(r.get('macs_m_counted'), 0)}"
        name = f"`{r['name']}`" + (" (pretrained)" if r["has_pretrained"] else "")
        note = r["note"].replace("|", "\\|")
        lines.append(f"| {name} | {r['family']} | {r['year']} | {params} | {macs} | {_fmt(r['top1'])} | "
                     f"{r['resolution']} | {note} |")
    return "\n".join(lines)
