"""`fp4check audit`: a checkpoint scale audit, sorted by severity; exit 1 on a critical finding."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    from fp4check.errors import InputError

    if not text:
        return list(range(n_layers))
    a, dash, b = text.partition("-")
    try:
        lo, hi = int(a), int(b) if dash else int(a)
    except ValueError:
        raise InputError(f"--layers takes N or A-B, got {text!r}") from None
    if not (0 <= lo <= hi < n_layers):
        raise InputError(f"--layers {text} is out of range: this checkpoint has layers 0..{n_layers - 1}")
    return list(range(lo, hi + 1))


@click.command()
@checkpoint_option
@click.option("--layers", default=None, metavar="A-B", help="Layers to audit (default: all).")
@click.option("--tokens", type=int, default=256, show_default=True, help="Calibration batch size.")
@seed_option
@json_option
def audit(checkpoint, layers: str | None, tokens: int, seed: int, as_json: bool) -> None:
    """Checkpoint scale audit: each NVFP4 input scale against the activations it meets on a calibration
    batch (overflow factor, predicted saturated blocks), NaN/Inf or NaN-code scales, zero global scales,
    w1/w3 global-scale mismatch, e8m0 exponents out of range. Exit 1 on a critical finding."""
    from fp4check.audit import audit as run_audit
    from fp4check.reports.terminal import stdout_console

    ckpt = open_checkpoint(checkpoint)
    findings = run_audit(ckpt, parse_layers(layers, ckpt.config.num_hidden_layers), tokens, seed)
    critical = [f for f in findings if f.severity == "critical"]
    if as_json:
        click.echo(json.dumps({"checkpoint": str(ckpt.path), "findings": [f.as_dict() for f in findings]}))
    else:
        con = stdout_console()
        if not findings:
            con.print(f"[green]no findings[/green] in {ckpt.path}")
        else:
            t = Table(title=f"scale audit of {ckpt.path}", title_justify="left")
            for col in ("severity", "family", "finding", "detail"):
                t.add_column(col, overflow="fold")
            for f in findings:
                style = SEVERITY_STYLE[f.severity]
                t.add_row(f"[{style}]{f.severity}[/{style}]", f.family, f.kind, f.detail)
            con.print(t)
            con.print(f"{len(critical)} critical, {sum(f.severity == 'warning' for f in findings)} warning(s)")
    sys.exit(1 if critical else 0)
