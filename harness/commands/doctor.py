"""`fp4check doctor`: versions, GPUs, and which backends can run here (and why not)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from fp4check.options import json_option
from fp4check.reports.terminal import stdout_console, styled


def backend_status() -> list[dict]:
    from fp4check.kernels.registry import BUILTIN_BACKENDS

    rows = []
    for b in BUILTIN_BACKENDS:
        reason = b.needs.unmet()
        rows.append(
            {
                "backend": b.name,
                "available": reason is None,
                "reason": reason or "",
                "needs": b.needs.describe(),
                "description": b.description,
            }
        )
    return rows


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Environment and backend availability: Python, torch, triton, nvidia-cutlass-dsl, CUDA and driver
    versions, GPU name and compute capability, and for each backend whether it can run here and why not."""
    from fp4check.environment import gpus, versions

    data = {"versions": versions(), "gpus": gpus(), "backends": backend_status()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    con = stdout_console()
    vt = Table(title="environment", title_justify="left", show_header=False)
    vt.add_column("what")
    vt.add_column("version")
    for k, v in data["versions"].items():
        vt.add_row(k, v if v is not None else "[dim]not installed[/dim]")
    gpu_text = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in data["gpus"])
    vt.add_row("GPUs", gpu_text or "[dim]none visible to torch[/dim]")
    con.print(vt)
    bt = Table(title="backends", title_justify="left")
    for col in ("backend", "status", "needs", "why not"):
        bt.add_column(col)
    for r in data["backends"]:
        bt.add_row(r["backend"], styled("ok" if r["available"] else "missing"), r["needs"], r["reason"])
    con.print(bt)
