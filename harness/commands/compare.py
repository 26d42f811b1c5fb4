"""`fp4check diff RUN_A RUN_B` and `fp4check history DIR`: numerical drift per stage across runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from rich.table import Table

from fp4check.options import json_option


def _f(v: float, fmt: str = "{:.6f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


@click.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option(
    "--max-cosine-drop", type=float, default=0.002, show_default=True, help="Regression: cosine drop above this."
)
@click.option(
    "--max-sqnr-drop", type=float, default=1.0, show_default=True, help="Regression: SQNR drop (dB) above this."
)
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write the diff as an HTML page.")
@json_option
def diff(
    run_a: Path, run_b: Path, max_cosine_drop: float, max_sqnr_drop: float, html: Path | None, as_json: bool
) -> None:
    """Compare two results folders stage by stage: metric deltas, new failures, new NaN/Inf, stages that
    appeared or vanished. Exit 1 on a regression (cosine or SQNR drop past the limits, a new NaN/Inf,
    pass -> fail)."""
    from fp4check.reports.diff import DiffRules, diff_rows
    from fp4check.reports.store import read_run
    from fp4check.reports.terminal import stdout_console, styled

    _, rows_a, _ = read_run(run_a)
    _, rows_b, _ = read_run(run_b)
    d = diff_rows(rows_a, rows_b, DiffRules(max_cosine_drop, max_sqnr_drop))
    if html:
        Path(html).write_text(_diff_html(d, run_a, run_b))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "regressions": d.regressions,
                    "changes": d.changes,
                    "appeared": [r["stage"] for r in d.appeared],
                    "vanished": [r["stage"] for r in d.vanished],
                },
                default=str,
            )
        )
    else:
        con = stdout_console()
        t = Table(title=f"{run_a} -> {run_b}", title_justify="left")
        for col in ("stage", "vs", "status", "cosine before", "after", "delta", "why"):
            t.add_column(col, overflow="fold")
        for c in d.changes[:40]:
            status = (
                f"{c['status_a']} -> {styled(c['status_b'])}"
                if c["status_a"] != c["status_b"]
                else styled(c["status_b"])
            )
            t.add_row(
                c["stage"],
                f"{c['compared_to']} {c['propagation']}",
                status,
                _f(c["cosine_a"]),
                _f(c["cosine_b"]),
                _f(c["d_cosine"], "{:+.2e}"),
                f"[red]{c['why']}[/red]" if c["regression"] else "",
            )
        con.print(t)
        con.print(
            f"{len(d.regressions)} regression(s), {len(d.appeared)} stage(s) appeared, {len(d.vanished)} vanished"
        )
    sys.exit(1 if d.regressions else 0)


def _diff_html(d, a: Path, b: Path) -> str:
    import html as h

    rows = "".join(
        f"<tr class='{'regression' if c['regression'] else ''}'><td>{h.escape(c['stage'])}</td>"
        f"<td>{h.escape(str(c['compared_to']))} {h.escape(str(c['propagation']))}</td><td>{c['status_a']} -&gt; "
        f"{c['status_b']}</td><td>{_f(c['cosine_a'])}</td><td>{_f(c['cosine_b'])}</td>"
        f"<td>{_f(c['d_cosine'], '{:+.2e}')}"
        f"</td><td>{h.escape(c['why'])}</td></tr>"
        for c in d.changes
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fp4check diff</title><style>"
        "body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #d0d7de;padding:3px 6px}tr.regression td{background:#ffebe9}</style></head><body>"
        f"<h1>fp4check diff</h1><p>{h.escape(str(a))} &rarr; {h.escape(str(b))}: {len(d.regressions)} regression(s)"
        f"</p><table><tr><th>stage</th><th>vs</th><th>status</th><th>cosine before</th><th>after</th><th>delta</th>"
        f"<th>why</th></tr>{rows}</table></body></html>"
    )


@click.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--metric", type=click.Choice(["cosine", "sqnr_db", "rel_l2", "max_abs"]), default="cosine", show_default=True
)
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write the history page here.")
@json_option
def history(root: Path, metric: str, html: Path | None, as_json: bool) -> None:
    """All runs under a folder, oldest first, and each stage's metric over them (commits and dates from
    meta.json), worst drift first, so drift shows before it becomes a failure."""
    from fp4check.errors import InputError
    from fp4check.reports.history import collect, drift_table, render_history_html
    from fp4check.reports.terminal import stdout_console

    if not Path(root).is_dir():
        raise InputError(f"{root} is not a folder of results")
    runs = collect(root)
    if not runs:
        raise InputError(f"{root} holds no fp4check results folders")
    table = drift_table(runs, metric)
    if html:
        Path(html).write_text(render_history_html(runs, metric))
    if as_json:
        click.echo(json.dumps({"runs": [m.get("run_id") for m, _ in runs], "stages": table}, default=str))
        return
    con = stdout_console()
    t = Table(title=f"{metric} over {len(runs)} runs ({root})", title_justify="left")
    for col in ("stage", "vs", "first", "last", "min", "change"):
        t.add_column(col)
    for r in table[:40]:
        t.add_row(
            r["stage"],
            f"{r['compared_to']} {r['propagation']}",
            _f(r["first"]),
            _f(r["last"]),
            _f(r["min"]),
            _f(r["change"], "{:+.2e}"),
        )
    con.print(t)
