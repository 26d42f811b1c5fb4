"""One self-contained HTML report of a results folder: opens offline, no CDN, styles and script inline,
charts as inline SVG, small enough to mail.

Sections: header (command, versions, GPU, checkpoint fingerprint, seed, time), summary counts, worst
stages first, a heat map of cosine vs the reference by layer x stage, metrics along depth when the run
covers several layers, the full table (sortable, filterable), and the gates used.
"""

from __future__ import annotations

import html
import json
import math

from fp4check.reports.table import SEVERITY, counts, worst_first

STATUS_COLOR = {
    "pass": "#1a7f37",
    "fail": "#cf222e",
    "error": "#bc4c00",
    "crash": "#8250df",
    "timeout": "#9a6700",
    "skip": "#6e7781",
}
STAGE_ORDER = ("route", "quant_l1", "l1", "act", "quant_l2", "l2", "combine", "shared", "out", "ep_sum", "swizzle")
TABLE_COLUMNS = (
    "stage",
    "check",
    "compared_to",
    "propagation",
    "scenario",
    "backend",
    "metric",
    "value",
    "threshold",
    "status",
    "cosine",
    "sqnr_db",
    "max_abs",
    "nan_out",
    "nan_ref",
    "code_match",
    "message",
)

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1f2328}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #d0d7de;padding:3px 6px;text-align:left}
th{background:#f6f8fa;cursor:pointer;position:sticky;top:0}
tr.fail td,tr.error td,tr.crash td,tr.timeout td{background:#ffebe9}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;color:#fff;margin-right:6px;font-weight:600}
.meta td:first-child{font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
#filter{margin:6px 0;padding:4px;width:320px}
"""

JS = """
function sortTable(col){const t=document.getElementById('rows');const b=t.tBodies[0];
const rows=[...b.rows];const asc=t.dataset.sort!=col||t.dataset.dir!='asc';
rows.sort((a,c)=>{const x=a.cells[col].dataset.v??a.cells[col].innerText,
y=c.cells[col].dataset.v??c.cells[col].innerText;
const nx=parseFloat(x),ny=parseFloat(y);const r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?r:-r});
rows.forEach(r=>b.appendChild(r));t.dataset.sort=col;t.dataset.dir=asc?'asc':'desc'}
function filterRows(){const q=document.getElementById('filter').value.toLowerCase();
const s=document.getElementById('status').value;let n=0;
for(const r of document.getElementById('rows').tBodies[0].rows){
const ok=r.innerText.toLowerCase().includes(q)&&(!s||r.dataset.status==s);
r.style.display=ok?'':'none';if(ok)n++}document.getElementById('shown').innerText=n}
window.addEventListener('DOMContentLoaded',()=>{filterRows();document.body.dataset.ready='1'});
"""


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v) -> str:
    x = _num(v)
    if math.isnan(x):
        return "" if v is None else _esc(v)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6f}" if abs(x) < 10 else f"{x:.4g}"


def _stage_name(row: dict) -> str:
    return row["stage"].rsplit(".", 1)[-1]


def _color(value: float, threshold: float) -> str:
    if math.isnan(value):
        return "#8250df"
    if not math.isnan(threshold) and value < threshold:
        return "#cf222e"
    gap = 1.0 - value
    return "#1a7f37" if gap < 0.005 else ("#4ac26b" if gap < 0.01 else "#d4a72c")


def heatmap_svg(rows: list[dict]) -> str:
    """Cosine vs the reference by layer x stage (the lowest over scenarios and modes)."""
    cells: dict[tuple[int, str], tuple[float, float]] = {}
    for r in rows:
        if r.get("compared_to") != "reference" or r.get("layer") is None or r["status"] == "skip":
            continue
        key = (int(_num(r["layer"])), _stage_name(r))
        v = _num(r.get("cosine"))
        old = cells.get(key)
        if old is None or not (v >= old[0]):
            cells[key] = (v, _num(r.get("threshold")) if r.get("metric") == "cosine" else math.nan)
    if not cells:
        return "<p>No rows compared with the reference.</p>"
    layers = sorted({k[0] for k in cells})
    stages = [s for s in STAGE_ORDER if any(k[1] == s for k in cells)]
    w, h, left, top = 78, 26, 60, 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w * len(stages) + 10}" '
        f'height="{top + h * len(layers) + 10}" role="img" aria-label="cosine heat map">'
    ]
    for j, s in enumerate(stages):
        parts.append(f'<text x="{left + j * w + w / 2}" y="16" font-size="11" text-anchor="middle">{_esc(s)}</text>')
    for i, layer in enumerate(layers):
        y = top + i * h
        parts.append(f'<text x="{left - 6}" y="{y + 17}" font-size="11" text-anchor="end">L{layer}</text>')
        for j, s in enumerate(stages):
            if (layer, s) not in cells:
                continue
            v, thr = cells[(layer, s)]
            label = "NaN" if math.isnan(v) else f"{v:.4f}"
            parts.append(
                f'<rect class="cell" data-stage="L{layer}.{s}" x="{left + j * w}" y="{y}" width="{w - 2}" '
                f'height="{h - 2}" fill="{_color(v, thr)}"><title>L{layer} {s}: cosine {label}</title></rect>'
                f'<text x="{left + j * w + w / 2 - 1}" y="{y + 17}" font-size="11" fill="#fff" '
                f'text-anchor="middle">{label}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def depth_svg(rows: list[dict]) -> str:
    """Cosine of each layer's block output vs the reference along depth (runs covering several layers)."""
    best: dict[int, float] = {}
    for r in rows:
        if r.get("compared_to") == "reference" and _stage_name(r) == "out" and r["status"] != "skip":
            layer, v = int(_num(r["layer"])), _num(r.get("cosine"))
            best[layer] = min(best.get(layer, 1.0), v) if not math.isnan(v) else math.nan
    if len(best) < 2:
        return ""
    layers = sorted(best)
    vals = [best[k] for k in layers]
    finite = [v for v in vals if not math.isnan(v)] or [1.0]
    lo = min(min(finite), 0.98) - 0.002
    width, height, pad = 520, 160, 36
    xs = [pad + i * (width - 2 * pad) / max(1, len(layers) - 1) for i in range(len(layers))]
    ys = [height - pad - (v - lo) / (1.0 - lo) * (height - 2 * pad) if not math.isnan(v) else pad for v in vals]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    marks = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{"#cf222e" if math.isnan(v) else "#0969da"}">'
        f'<title>L{k}: {v:.5f}</title></circle><text x="{x:.1f}" y="{height - 14}" font-size="10" '
        f'text-anchor="middle">L{k}</text>'
        for x, y, v, k in zip(xs, ys, vals, layers, strict=True)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="cosine along depth"><polyline fill="none" stroke="#0969da" stroke-width="2" points="{pts}"/>'
        f'{marks}<text x="4" y="{pad}" font-size="10">1.0</text><text x="4" y="{height - pad}" font-size="10">'
        f"{lo:.3f}</text></svg>"
    )


def _meta_table(meta: dict, complete: bool) -> str:
    v = meta.get("versions") or {}
    gpus = ", ".join(f"{g.get('name')} (sm {g.get('capability')})" for g in meta.get("gpus") or []) or "none"
    items = [
        ("command", meta.get("command")),
        ("run", meta.get("run_id")),
        ("started", meta.get("start")),
        ("ended", meta.get("end") or "did not finish (partial results)"),
        ("checkpoint", meta.get("checkpoint")),
        ("fingerprint", meta.get("checkpoint_fingerprint")),
        ("seed", meta.get("seed")),
        ("backend", meta.get("backend")),
        ("git", meta.get("git_sha")),
        (
            "versions",
            ", ".join(
                f"{k} {v[k]}"
                for k in ("fp4check", "torch", "triton", "nvidia-cutlass-dsl", "cuda (torch build)", "driver")
                if v.get(k)
            ),
        ),
        ("GPU", gpus),
    ]
    return (
        '<table class="meta">'
        + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(x)}</td></tr>" for k, x in items)
        + "</table>"
    )


def _rows_table(rows: list[dict], table_id: str = "rows") -> str:
    head = "".join(f'<th onclick="sortTable({i})">{_esc(c)}</th>' for i, c in enumerate(TABLE_COLUMNS))
    body = []
    for r in rows:
        cells = []
        for c in TABLE_COLUMNS:
            v = r.get(c)
            if c == "status":
                cells.append(
                    f'<td data-v="{SEVERITY.get(v, 4)}"><span class="badge" '
                    f'style="background:{STATUS_COLOR.get(v, "#444")}">{_esc(v)}</span></td>'
                )
            elif c in ("nan_out", "nan_ref"):
                cells.append(f'<td class="num">{"" if v is None else int(_num(v))}</td>')
            elif isinstance(v, (int, float)) or c in (
                "value",
                "threshold",
                "cosine",
                "sqnr_db",
                "max_abs",
                "code_match",
            ):
                x = _num(v)
                cells.append(f'<td class="num" data-v="{"" if math.isnan(x) else x}">{_fmt(v)}</td>')
            else:
                cells.append(f"<td>{_esc(v)}</td>")
        body.append(f'<tr class="{_esc(r["status"])}" data-status="{_esc(r["status"])}">{"".join(cells)}</tr>')
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _gates(meta: dict) -> str:
    gates = meta.get("thresholds") or {}
    if not gates:
        return "<p>Gates were not recorded in this run's meta.json.</p>"
    rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(m)}</td><td class='num'>&ge; {_esc(t)}</td></tr>"
        for k, (m, t) in sorted(gates.items())
    )
    return f"<table><tr><th>gate</th><th>metric</th><th>minimum</th></tr>{rows}</table>"


def trace_section(trace: dict | None) -> str:
    if not trace:
        return ""
    tree = "\n".join(trace.get("tree") or [])
    body = f"<pre id='trace-tree'>{_esc(tree)}</pre>" if tree else ""
    return f"<h2>nan-trace</h2><p id='trace-cause'><b>{_esc(trace.get('cause'))}</b></p>{body}"


def render_html(
    meta: dict, rows: list[dict], complete: bool, title: str | None = None, trace: dict | None = None
) -> str:
    title = title or f"fp4check report {meta.get('run_id', '')}".strip()
    c = counts(rows)
    badges = "".join(
        f'<span class="badge" style="background:{STATUS_COLOR.get(k, "#444")}">{_esc(k)} {n}</span>'
        for k, n in sorted(c.items(), key=lambda kv: SEVERITY.get(kv[0], 4))
    )
    worst = [r for r in worst_first(rows) if r["status"] != "skip"][:15]
    partial = "" if complete else "<p><b>Partial results:</b> this run did not finish.</p>"
    depth = depth_svg(rows)
    sections = [
        f"<h1>{_esc(title)}</h1>",
        partial,
        _meta_table(meta, complete),
        f'<h2>Summary</h2><p id="summary">{badges} &middot; {len(rows)} rows</p>',
        trace_section(trace),
        "<h2>Worst stages first</h2>",
        _rows_table(worst, "worst"),
        "<h2>Cosine vs reference, layer x stage</h2>",
        heatmap_svg(rows),
        f"<h2>Along depth</h2>{depth}" if depth else "",
        '<h2>All rows</h2><input id="filter" placeholder="filter (stage, backend, message...)" oninput="filterRows()">'
        '<select id="status" onchange="filterRows()"><option value="">any status</option>'
        + "".join(f'<option value="{s}">{s}</option>' for s in c)
        + '</select> <span id="shown">'
        + str(len(rows))
        + "</span> shown",
        _rows_table(rows),
        "<h2>Gates</h2>",
        _gates(meta),
    ]
    data = json.dumps({"counts": c, "rows": len(rows)})
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}"
        f"<script>{JS}</script><script type='application/json' id='fp4check-data'>{data}</script></body></html>"
    )
