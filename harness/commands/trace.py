"""`fp4check nan-trace`: the first stage that produces NaN/Inf (or diverges), and why."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.tree import Tree

from fp4check.commands.audit import parse_layers
from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option


@click.command("nan-trace")
@checkpoint_option
@click.option("--layers", default=None, metavar="A-B", help="Layers to trace (default: all).")
@click.option("--backend", default="emulated", show_default=True, help="Backend under test (as for fp4check layer).")
@click.option("--inject", default="", metavar="FAULT[,FAULT]", help="Faults to switch on in the emulated backend.")
@click.option("--tokens", type=int, default=256, show_default=True)
@click.option("--scenario", default="natural", show_default=True, help="Routing scenario.")
@seed_option
@click.option("--act-scales", type=click.Choice(["auto", "checkpoint", "warmup"]), default="auto", show_default=True)
@click.option(
    "--metric",
    type=click.Choice(["nan", "cosine"]),
    default="nan",
    show_default=True,
    help="nan: the first NaN/Inf producer; cosine: the first stage whose isolated cosine vs the "
    "reference falls below --threshold.",
)
@click.option("--threshold", type=float, default=0.98, show_default=True, help="Gate for --metric cosine.")
@click.option(
    "--bisect",
    "do_bisect",
    is_flag=True,
    help="Substitution bisection over the chain: the smallest set of blocks (a layer's attn or moe) that, run "
    "on the backend with the rest on the emulated pipeline, still changes the output (cosine < 0.9999 or NaN).",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Results folder.")
@json_option
def nan_trace(
    checkpoint, layers, backend, inject, tokens, scenario, seed, act_scales, metric, threshold, do_bisect, out, as_json
) -> None:
    """Find where a NaN (or a divergence) is first produced, not where it is passed on. The chain runs from
    the embeddings through --layers on the backend and on the reference side by side; every stage (mHC,
    attention, MoE) records finite or not, NaN/Inf counts and amax on both sides. The producer is the first
    stage with non-finite output from finite inputs; it is diagnosed (rerun by the exact pipeline on the
    same inputs, its weights and scales audited, the tokens, heads and experts carrying the NaN) and one
    sentence names the likely cause. Exit 1 when a producer (or a diverging stage) is found."""
    from fp4check.commands.checks import run_meta
    from fp4check.kernels.registry import load_backend
    from fp4check.reports.store import RunWriter, new_run_dir
    from fp4check.reports.terminal import progress_bar, stdout_console
    from fp4check.rows import make_row
    from fp4check.trace import divergence_trace, nan_trace, tree_lines

    ckpt = open_checkpoint(checkpoint)
    faults = [f.strip() for f in inject.split(",") if f.strip()]
    be = load_backend(backend, faults)
    layer_list = parse_layers(layers, ckpt.config.num_hidden_layers)
    path, run_id = new_run_dir(out)
    writer = RunWriter(path, run_id, run_meta(ckpt, seed, be.name))
    con = stdout_console()
    if do_bisect:
        _bisect(ckpt, backend, faults, layer_list, tokens, seed, path, writer, con, as_json)
        return
    if metric == "cosine":
        from fp4check.layer_check import LayerCheck, layer_rows
        from fp4check.thresholds import Thresholds

        rows = []
        with progress_bar("divergence trace") as update:
            for i, layer in enumerate(layer_list):
                update(i, len(layer_list), f"layer {layer}")
                c = LayerCheck("divergence-trace", layer, tokens, seed, phase="prefill", act_scales=act_scales)
                got = layer_rows(ckpt, be, c, Thresholds(), {"run_id": run_id})
                writer.write(got)
                rows += got
            update(len(layer_list), len(layer_list), "done")
        hit = divergence_trace(rows, threshold)
        cause = (
            f"{hit['stage']} is the first stage whose isolated cosine vs the reference falls below {threshold} "
            f"({hit['cosine']:.6f})"
            if hit
            else f"every isolated stage keeps cosine >= {threshold}"
        )
        trace = {"metric": "cosine", "threshold": threshold, "first": hit["stage"] if hit else None, "cause": cause}
    else:
        with progress_bar("nan-trace") as update:
            res = nan_trace(ckpt, be, layer_list, scenario, tokens, seed, act_scales, progress=update)
        base = {"check": "nan-trace", "scenario": scenario, "seed": seed, "tokens": tokens, "backend": be.name}
        stat_rows = []
        for st in res.stats:
            m = {
                "nan_out": st.nan,
                "inf_out": st.inf,
                "nan_ref": st.ref_nan,
                "inf_ref": 0,
                "amax_out": st.amax,
                "amax_ref": st.ref_amax,
            }
            stat_rows.append(
                make_row(
                    {**base, "layer": st.layer},
                    st.sid,
                    st.key,
                    "reference",
                    "propagated",
                    m,
                    "finite",
                    math.nan,
                    status="pass" if st.finite else "fail",
                    message=st.role,
                )
            )
        writer.write(stat_rows)
        trace = {
            "metric": "nan",
            "producer": res.producer.as_dict() if res.producer else None,
            "propagators": [s.sid for s in res.stats if s.role == "propagator"],
            "diagnosis": res.diagnosis,
            "cause": res.cause,
            "notes": res.notes,
            "tree": tree_lines(res),
        }
        hit = res.producer
        cause = res.cause
    (path / "trace.json").write_text(json.dumps(trace, indent=2, default=str) + "\n")
    writer.finish()
    if as_json:
        click.echo(json.dumps({"run_dir": str(path), **trace}, default=str))
    else:
        if metric == "nan":
            tree = Tree(f"[bold]nan-trace[/bold] backend {be.name}")
            layers: list[list[str]] = []
            for line in trace["tree"]:
                if line.startswith("L"):
                    layers.append([])
                layers[-1].append(line)
            for header, *body in layers:
                # finite layers, and layers that only pass a NaN on, are one line here (trace.json keeps
                # every stage): the producer's layer reads at a glance
                if header.endswith("finite"):
                    tree.add(f"[green]{header}[/green]")
                    continue
                if not any("PRODUCER" in line for line in body):
                    n = sum(line.startswith("    ") for line in body)
                    tree.add(f"[yellow]{header}: {n} stages pass the NaN on[/yellow]")
                    continue
                layer_node = tree.add(f"[bold]{header}[/bold]")
                for line in body:
                    if not line.startswith("    "):
                        node = layer_node.add(line.strip())
                        continue
                    style = "bold red" if "PRODUCER" in line else ("yellow" if "propagates" in line else "")
                    node.add(f"[{style}]{line.strip()}[/{style}]" if style else line.strip())
            con.print(tree)
            if res.producer:
                d = res.diagnosis
                t = Table(title="diagnosis", title_justify="left", show_header=False)
                t.add_column("what")
                t.add_column("")
                t.add_row("producer", res.producer.sid)
                t.add_row(
                    "exact pipeline on the same inputs",
                    {True: "finite", False: "NaN too", None: "not rerun"}[d["exact_pipeline_finite"]],
                )
                toks = d["where"].get("tokens", [])
                t.add_row("tokens", f"{len(toks)}: {toks[:16]}{' ...' if len(toks) > 16 else ''}")
                for what in ("experts", "heads", "entries"):
                    if what in d["where"]:
                        t.add_row(what, str(d["where"][what][:16]))
                for f in d["findings"][:5]:
                    t.add_row(f"{f['severity']}: {f['kind']}", f"{f['family']}: {f['detail']}")
                con.print(t)
        for note in trace.get("notes", []):
            con.print(f"[yellow]note:[/yellow] {note}")
        con.print(f"[bold]{'cause' if hit else 'result'}:[/bold] {cause}")
        con.print(f"results: {path}")
    sys.exit(1 if hit else 0)


def _bisect(
    ckpt, backend: str, faults: list[str], layers: list[int], tokens: int, seed: int, path, writer, con, as_json
):
    import torch

    from fp4check.bisect import bisect
    from fp4check.commands.chain import parse_token_ids
    from fp4check.kernels.registry import load_backend
    from fp4check.reports.terminal import progress_bar

    ids = torch.tensor(parse_token_ids(None, tokens, ckpt.config.vocab_size, seed))
    with progress_bar("bisecting") as update:
        update(0, 1, "all blocks on the backend")
        found, steps = bisect(ckpt, lambda: load_backend(backend, faults), layers, ids, seed)
        update(1, 1, "done")
    units = [f"L{n}.{b}" for n, b in found] if found else None
    if found is None:
        cause = "no failure to bisect: with every block on the backend the output matches the emulated pipeline"
    else:
        cause = f"the failure needs these blocks on the backend: {', '.join(units)}" + (
            " (more than one: a non-local bug, state shared between them)" if len(units) > 1 else ""
        )
    trace = {"metric": "bisect", "minimal": units, "steps": [s.as_dict() for s in steps], "cause": cause}
    (path / "trace.json").write_text(json.dumps(trace, indent=2, default=str) + "\n")
    writer.finish()
    if as_json:
        click.echo(json.dumps({"run_dir": str(path), **trace}, default=str))
    else:
        t = Table(title="substitution bisection (blocks on the backend; the rest emulated)", title_justify="left")
        for col in ("step", "on the backend", "cosine", "NaN", "reproduces"):
            t.add_column(col, overflow="fold")
        for i, st in enumerate(steps, 1):
            d = st.as_dict()
            t.add_row(
                str(i),
                ", ".join(d["on_backend"]),
                f"{d['cosine']:.6f}",
                str(d["nan"]),
                "[red]yes[/]" if d["reproduces"] else "[green]no[/]",
            )
        con.print(t)
        con.print(f"[bold]{'cause' if found else 'result'}:[/bold] {cause}")
        con.print(f"results: {path}")
    sys.exit(1 if found else 0)
