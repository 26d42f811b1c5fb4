"""`fp4check selftest`: inject each known bug class; show which check catches it."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option


@click.command()
@checkpoint_option
@click.option("--tokens", type=int, default=256, show_default=True, help="Tokens per check (skewed uses >= 512).")
@seed_option
@click.option(
    "--out", type=click.Path(), default=None, help="Results folder for every row (default fp4check-runs/...)."
)
@json_option
def selftest(checkpoint, tokens: int, seed: int, out, as_json: bool) -> None:
    """Run every injected fault through the checks that should catch it (MoE faults through the MoE check,
    attention faults through the attention half of a layer of the type they live in, faults between
    layers through the chain) and print the detection matrix (fault, the stage that caught it first, metric
    and value); clean runs must stay clean. Exit 1 if a fault goes undetected or a
    clean run is flagged."""
    from pathlib import Path

    from fp4check.commands.checks import run_meta
    from fp4check.reports.store import RunWriter, new_run_dir
    from fp4check.reports.terminal import progress_bar, stdout_console, styled
    from fp4check.runner import execute
    from fp4check.scenarios import pick_layer
    from fp4check.selftest import matrix, selftest_specs

    ckpt = open_checkpoint(checkpoint)
    layer = pick_layer(ckpt, "natural", None, "C4A" if ckpt.config.layers_of_type("C4A") else None)
    hashed = [li.index for li in ckpt.config.layers if li.routing == "hash"]
    base = {
        "seed": seed,
        "act_scales": "auto",
        "backend": "emulated",
        "checkpoint": str(ckpt.path),
        "thresholds": [],
        "config": None,
    }
    cfg = ckpt.config
    attn_layers = {}
    for layer_type in ("C4A", "C128A", "SWA"):
        found = cfg.layers_of_type(layer_type)
        if found:
            attn_layers[layer_type] = ([i for i in found if cfg.layers[i].routing == "bias"] or found)[0]
    from fp4check.commands.chain import parse_token_ids

    ids = parse_token_ids(None, tokens, cfg.vocab_size, seed)
    specs = selftest_specs(base, layer, hashed[0] if hashed else None, tokens, attn_layers, cfg.num_hidden_layers, ids)
    path, run_id = new_run_dir(Path(out) if out else None)
    writer = RunWriter(path, run_id, run_meta(ckpt, seed, "emulated (faults injected)"))
    results = []
    with progress_bar("selftest") as update:
        for i, (fault, spec) in enumerate(specs):
            update(i, len(specs), spec["check"])
            rows = execute({**spec, "run_id": run_id})
            writer.write(rows)
            results.append((fault, spec, rows))
        update(len(specs), len(specs), "done")
    writer.finish()
    m = matrix(results)
    bad = [r for r in m if not r["ok"]]
    if as_json:
        click.echo(json.dumps({"run_dir": str(path), "matrix": m}, default=str))
    else:
        con = stdout_console()
        t = Table(title="selftest: which check catches each fault", title_justify="left")
        for col in ("fault", "scenario", "caught by", "vs", "value", "rows", "ok"):
            t.add_column(col, overflow="fold")
        for r in m:
            value = "" if r["value"] is None else f"{r['metric']} {float(r['value']):.4g}"
            t.add_row(
                r["fault"],
                r["scenario"],
                r["caught_by"] or "-",
                f"{r['vs']} {r['mode']}".strip(),
                value or (r["status"] if r["caught_by"] else ""),
                f"{r['failing_rows']}/{r['rows']}",
                styled("pass" if r["ok"] else "fail"),
            )
        con.print(t)
        con.print(f"results: {path}")
    sys.exit(1 if bad else 0)
