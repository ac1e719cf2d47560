"""Self-contained HTML pages (inline SVG + CSS, no scripts from anywhere) for one report or a comparison."""

from __future__ import annotations

import html
from .report import by_kernel, by_module, coverage

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2328;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem} h2{font-size:1.1rem;margin:2rem 0 .5rem}
.meta{color:#57606a;margin-bottom:1rem} .badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-size:.8rem;margin-right:.4rem;background:#ddf4ff;color:#0969da}
.badge.warn{background:#fff8c5;color:#9a6700}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0} .card{border:1px solid #d0d7de;border-radius:8px;padding:.6rem 1rem;min-width:150px}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{padding:.3rem .5rem;border-bottom:1px solid #eaeef2;text-align:left}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums} code{font-size:12px}
svg text{font:12px system-ui,sans-serif}
"""
_PALETTE = ["#0969da", "#bf3989", "#1a7f37", "#bc4c00", "#8250df", "#0550ae", "#cf222e", "#4d2d00"]


def _bar_chart(rows: list[tuple[str, float]], *, unit: str = "ms", width: int = 1000, color: str = "#0969da") -> str:
    if not rows:
        return "<p>(no layers)</p>"
    label_w, bar_h, gap = 300, 18, 6
    vmax = max(v for _, v in rows) or 1.0
    height = len(rows) * (bar_h + gap) + 10
    parts = [f'<svg width="{width}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, v) in enumerate(rows):
        y = 5 + i * (bar_h + gap)
        w = max(1.0, (width - label_w - 90) * v / vmax)
        parts.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{html.escape(label[:48])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{color}">'
                     f"<title>{html.escape(label)}: {v:.3f} {unit}</title></rect>")
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 13}">{v:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(d: dict) -> str:
    return f"{d['p50']:.3f} <small>({d['p10']:.3f}–{d['p90']:.3f})</small>"


def report_html(report: dict, *, top: int = 20, depth: int = 3) -> str:
    dev, art, cov = report["device"], report["artifact"], coverage(report)
    estimate = report.get("kind") == "estimate"
    title = f"{art['path'].rsplit('/', 1)[-1]} on {dev['model']} ({dev['runtime']} {dev['runtime_version']})"
    modules = by_module(report, depth=depth)[:top]
    layers = sorted(report["layers"], key=lambda l: -l["ms"]["p50"])
    rows = "".join(
        f"<tr><td>{html.escape(l['name'])}</td><td><code>{html.escape(l.get('module') or '—')}</code></td>"
        f"<td>{html.escape(l['op_type'])}</td><td>{html.escape(l['compute_unit'])}</td>"
        f"<td class=num>{_fmt(l['ms'])}</td></tr>" for l in layers[: max(top * 3, 50)])
    badge = '<span class="badge warn">static estimate — no runtime ran</span>' if estimate else \
        '<span class="badge">measured</span>'
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("notes", []))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="meta">{badge}<span class="badge">{html.escape(report['delegate'])}</span>
<span class="badge">{report['threads']} thread(s)</span><span class="badge">{report['runs']} runs, {report['warmup_runs']} warm-up</span>
{html.escape(dev.get('os', ''))} · {html.escape(dev.get('abi', ''))} · sha256 <code>{art['sha256'][:16]}…</code></div>
<div class="cards">
<div class="card">total (p50, p10–p90)<b>{report['total_ms']['p50']:.3f} ms</b>{report['total_ms']['p10']:.3f}–{report['total_ms']['p90']:.3f}</div>
<div class="card">layers ÷ total<b>{cov['layers_over_total'] * 100:.1f}%</b>sum of layer times per run</div>
<div class="card">named modules<b>{cov['named_fraction'] * 100:.1f}%</b>of layer time</div>
<div class="card">layers<b>{cov['layers']}</b>{html.escape(', '.join(sorted({l['compute_unit'] for l in report['layers']})))}</div>
</div>
<h2>Top {len(modules)} PyTorch modules (p50 ms, grouped to depth {depth})</h2>
{_bar_chart(modules)}
<h2>Layers (slowest first)</h2>
<table><tr><th>layer</th><th>PyTorch module</th><th>op</th><th>compute unit</th><th>ms p50 (p10–p90)</th></tr>{rows}</table>
<h2>Notes</h2><ul>{notes}<li>mapping: {html.escape(report.get('mapping', 'n/a'))}</li></ul>
</body></html>
"""


def compare_rows(reports: list[dict], depth: int = 2, by: str = "module") -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """Column labels and per-module (or per-kernel-class, by="kernel") p50 rows plus the total, side by side."""
    labels = [f"{r['device']['runtime']}@{r['device']['model'][:24]}" for r in reports]
    seen: dict[str, list[float | None]] = {}
    for i, r in enumerate(reports):
        for mod, ms in (by_kernel(r) if by == "kernel" else by_module(r, depth=depth)):
            seen.setdefault(mod, [None] * len(reports))[i] = ms
    order = sorted(seen.items(), key=lambda kv: -max(v or 0.0 for v in kv[1]))
    return labels, [("TOTAL (p50)", [r["total_ms"]["p50"] for r in reports])] + order


def compare_html(reports: list[dict], names: list[str], *, depth: int = 2, top: int = 20, by: str = "module") -> str:
    labels, rows = compare_rows(reports, depth, by)
    what = "kernel class" if by == "kernel" else "module"
    legend = "".join(f'<span class="badge" style="background:{_PALETTE[i % 8]};color:#fff">{html.escape(n)}</span>'
                     for i, n in enumerate(names))
    head = "".join(f"<th>{html.escape(n)}<br><small>{html.escape(l)}</small></th>" for n, l in zip(names, labels))
    body = "".join("<tr><td><code>" + html.escape(mod) + "</code></td>" + "".join(
        f"<td class=num>{v:.3f}</td>" if v is not None else "<td class=num>—</td>" for v in vals) + "</tr>"
        for mod, vals in rows[: top + 1])
    # grouped bars: one row per module, one coloured bar per report
    label_w, bar_h, width = 260, 12, 1000
    shown = rows[1: top + 1]  # modules only: the total would flatten every other bar (it is in the table)
    vmax = max((v or 0.0) for _, vals in shown for v in vals) or 1.0
    group_h = bar_h * len(reports) + 10
    svg = [f'<svg width="{width}" height="{group_h * len(shown) + 10}" xmlns="http://www.w3.org/2000/svg">']
    for gi, (mod, vals) in enumerate(shown):
        y0 = 5 + gi * group_h
        svg.append(f'<text x="{label_w - 8}" y="{y0 + group_h / 2}" text-anchor="end">{html.escape(mod[:40])}</text>')
        for ri, v in enumerate(vals):
            if v is None:
                continue
            w = max(1.0, (width - label_w - 80) * v / vmax)
            y = y0 + ri * bar_h
            svg.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{_PALETTE[ri % 8]}">'
                       f"<title>{html.escape(names[ri])}: {v:.3f} ms</title></rect>"
                       f'<text x="{label_w + w + 4:.1f}" y="{y + 10}">{v:.3f}</text>')
    svg.append("</svg>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lwdeploy compare</title>
<style>{_CSS}</style></head><body><h1>Per-{what} latency, side by side</h1><div class="meta">{legend}</div>
{''.join(svg)}
<h2>p50 ms per {what}{f" (depth {depth})" if by != "kernel" else ""}</h2><table><tr><th>{what}</th>{head}</tr>{body}</table></body></html>
"""
