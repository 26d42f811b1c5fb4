"""Every run under a folder, in time order, and each stage's metric across them: drift shows before it
becomes a failure. Commits and dates come from each run's meta.json."""

from __future__ import annotations

import html
import math
from pathlib import Path

from fp4check.reports.diff import row_key
from fp4check.reports.store import read_run


def collect(root: Path) -> list[tuple[dict, list[dict]]]:
    """(meta, rows) of every results folder below root, oldest first."""
    runs = []
    for jsonl in sorted(Path(root).rglob("results.jsonl")):
        meta, rows, _ = read_run(jsonl.parent)
        meta.setdefault("run_id", jsonl.parent.name)
        runs.append((meta, rows))
    runs.sort(key=lambda mr: (str(mr[0].get("start", "")), mr[0]["run_id"]))
    return runs


def series(runs: list[tuple[dict, list[dict]]], metric: str = "cosine") -> dict[tuple, list[float]]:
    """row key -> the metric in each run (NaN where the run lacks the row)."""
    out: dict[tuple, list[float]] = {}
    for i, (_, rows) in enumerate(runs):
        for r in rows:
            if r.get("status") == "skip":
                continue
            try:
                v = float(r.get(metric))
            except (TypeError, ValueError):
                v = math.nan
            out.setdefault(row_key(r), [math.nan] * len(runs))[i] = v
    return out


def drift_table(runs, metric: str = "cosine") -> list[dict]:
    rows = []
    for key, vals in series(runs, metric).items():
        finite = [v for v in vals if not math.isnan(v)]
        if not finite:
            continue
        rows.append(
            {
                "stage": key[1],
                "check": key[0],
                "compared_to": key[2],
                "propagation": key[3],
                "scenario": key[4],
                "first": finite[0],
                "last": finite[-1],
                "min": min(finite),
                "change": finite[-1] - finite[0],
                "values": vals,
            }
        )
    rows.sort(key=lambda r: r["change"])
    return rows


def _spark(vals: list[float], width: int = 220, height: int = 36) -> str:
    pts = [(i, v) for i, v in enumerate(vals) if not math.isnan(v)]
    if not pts:
        return ""
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span = (hi - lo) or 1e-9
    n = max(1, len(vals) - 1)
    xy = [(4 + i * (width - 8) / n, height - 4 - (v - lo) / span * (height - 8)) for i, v in pts]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2"><title>{v:.6f}</title></circle>'
        for (x, y), (_, v) in zip(xy, pts, strict=True)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<polyline fill="none" stroke="#0969da" points="{line}"/>{dots}</svg>'
    )


def render_history_html(runs, metric: str = "cosine", limit: int = 200) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(m.get('git_sha') or ''))}<br>{e(str(m.get('start', ''))[:19])}</th>" for m, _ in runs)
    body = []
    for r in drift_table(runs, metric)[:limit]:
        body.append(
            f"<tr><td>{e(r['stage'])}</td><td>{e(str(r['compared_to']))}</td><td>{e(str(r['propagation']))}"
            f"</td><td>{e(str(r['scenario']))}</td><td>{r['first']:.6f}</td><td>{r['last']:.6f}</td>"
            f"<td>{r['change']:+.2e}</td><td>{_spark(r['values'])}</td></tr>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fp4check history</title><style>"
        "body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #d0d7de;padding:3px 6px}</style></head><body>"
        f"<h1>fp4check history: {metric} over {len(runs)} runs</h1><p>runs: <table><tr>{head}</tr></table></p>"
        "<table><tr><th>stage</th><th>vs</th><th>mode</th><th>scenario</th><th>first</th><th>last</th>"
        f"<th>change</th><th>trend</th></tr>{''.join(body)}</table></body></html>"
    )
