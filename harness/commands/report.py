"""`fp4check report RUN_DIR`: the results of a run (complete or cut short) as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fp4check.options import json_option


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--html", type=click.Path(path_type=Path), default=None, help="Write a self-contained HTML report (opens offline)."
)
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML for CI systems.")
@click.option("--all", "show_all", is_flag=True, help="Show every row, not only the worst 40.")
@json_option
def report(run_dir: Path, html: Path | None, junit: Path | None, show_all: bool, as_json: bool) -> None:
    """Render a results folder in the terminal, as HTML and as JUnit XML; a run that was killed part-way
    renders from its JSONL. Exit 1 when a row failed, errored, crashed or timed out."""
    from fp4check.commands.checks import write_reports
    from fp4check.reports.store import read_run
    from fp4check.reports.table import counts, render
    from fp4check.reports.terminal import stdout_console

    meta, rows, complete = read_run(run_dir)
    written = write_reports(run_dir, html, junit)
    if as_json:
        click.echo(json.dumps({"meta": meta, "complete": complete, "counts": counts(rows), "rows": rows}, default=str))
    else:
        con = stdout_console()
        state = "" if complete else "  [yellow](partial: the run did not finish)[/yellow]"
        con.print(f"[bold]{run_dir}[/bold]  {meta.get('command', '')}{state}")
        render(rows, con, title="results", limit=None if show_all else 40)
        for kind, p in written:
            con.print(f"{kind}: {p}")
    sys.exit(1 if any(r["status"] in ("fail", "error", "crash", "timeout") for r in rows) else 0)
