"""The terminal view of result rows: a rich table, worst stage first, coloured status."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from fp4check.reports.terminal import styled

SHORT = {"reference": "ref", "emulated": "emu", "single_rank": "1rank", "isolated": "iso", "propagated": "prop"}
SEVERITY = {"crash": 0, "timeout": 1, "error": 2, "fail": 3, "skip": 5, "pass": 6}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def worst_first(rows: list[dict]) -> list[dict]:
    def key(r):
        margin = _num(r.get("value")) - _num(r.get("threshold"))
        return (SEVERITY.get(r.get("status"), 4), margin if not math.isnan(margin) else -math.inf)

    return sorted(rows, key=key)


def _fmt(v) -> str:
    x = _num(v)
    if math.isnan(x):
        return "-" if v is None else str(v)
    return f"{x:.6f}" if abs(x) < 10 else f"{x:.4g}"


def counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _note(r: dict) -> str:
    """The message, less what the metric columns already say."""
    msg = r.get("message") or ""
    metric = r.get("metric") or ""
    parts = [p for p in msg.split("; ") if p and not (metric and p.startswith(f"{metric} "))]
    return "; ".join(parts)


def render(rows: list[dict], console: Console, title: str = "results", limit: int | None = 40) -> None:
    t = Table(title=title, title_justify="left")
    t.add_column("stage", no_wrap=True)
    t.add_column("vs", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("metric", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("gate", justify="right", no_wrap=True)
    t.add_column("NaN", no_wrap=True)  # NaN in output / in reference
    t.add_column("note", overflow="fold")
    shown = worst_first(rows)
    for r in shown[:limit] if limit else shown:
        nan = f"{r.get('nan_out') or 0}/{r.get('nan_ref') or 0}"
        vs = f"{SHORT.get(r.get('compared_to'), r.get('compared_to') or '')} {SHORT.get(r.get('propagation'), '')}"
        t.add_row(
            r["stage"],
            vs.strip(),
            styled(r["status"]),
            r.get("metric") or "",
            _fmt(r.get("value")),
            _fmt(r.get("threshold")),
            nan,
            _note(r),
        )
    console.print(t)
    if limit and len(shown) > limit:
        console.print(f"[dim]... {len(shown) - limit} more rows (fp4check report RUN --all)[/dim]")
    c = counts(rows)
    console.print("  ".join(f"{styled(k)} {v}" for k, v in sorted(c.items(), key=lambda kv: SEVERITY.get(kv[0], 4))))
