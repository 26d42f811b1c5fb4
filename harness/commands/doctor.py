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


def cutedsl_kernels() -> list[dict]:
    """The cutedsl backend's kernels, the archs each targets, and what this machine can do with each:
    run it (its GPU is here), compile it (the DSL is installed; the PTX is checked in CI), or neither."""
    from fp4check.environment import has_module

    if not has_module("cutlass"):
        return []
    from fp4check.kernels.cutedsl.runtime import gpu_arch, kernels

    here = gpu_arch()
    return [
        {
            "kernel": k.name,
            "archs": list(k.archs),
            "here": "runs" if here in k.archs else "compiles only",
            "instructions": sorted({i for arch in k.archs for i in k.expect.get(arch, ())}),
        }
        for k in kernels().values()
    ]


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Environment and backend availability: Python, torch, triton, nvidia-cutlass-dsl, CUDA and driver
    versions, GPU name and compute capability, and for each backend whether it can run here and why not."""
    from fp4check.environment import gpus, versions

    data = {"versions": versions(), "gpus": gpus(), "backends": backend_status(), "cutedsl_kernels": cutedsl_kernels()}
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
    if data["cutedsl_kernels"]:
        kt = Table(title="cutedsl kernels", title_justify="left")
        for col in ("kernel", "archs", "here", "checked in its PTX"):
            kt.add_column(col)
        for r in data["cutedsl_kernels"]:
            status = styled("ok") if r["here"] == "runs" else "compiles only"
            kt.add_row(r["kernel"], ", ".join(r["archs"]), status, "; ".join(r["instructions"]))
        con.print(kt)
