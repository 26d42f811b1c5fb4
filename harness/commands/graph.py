"""`fp4check graph`: is the backend's MoE safe to capture in a CUDA graph?"""

from __future__ import annotations

import json
import sys

import click

from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option


@click.command()
@checkpoint_option
@click.option("--backend", default="triton", show_default=True, help="Backend under test.")
@click.option("--layer", type=int, default=None, help="Layer whose weights to use (default: the first bias-routed).")
@click.option("--tokens", type=int, default=256, show_default=True, help="Tokens in the batch.")
@seed_option
@json_option
def graph(checkpoint, backend: str, layer: int | None, tokens: int, seed: int, as_json: bool) -> None:
    """Capture each MoE op of the backend (and its moe_forward) in a CUDA graph on the layer's weights,
    replay it with new inputs copied into the static buffers and compare with eager; a host sync during
    capture, or work the graph missed (another stream, values baked in at capture), fails with the reason.
    Exit 1 on a failure, 2 without a CUDA GPU."""
    import torch

    from fp4check.errors import InputError
    from fp4check.graph_check import moe_graph_checks
    from fp4check.kernels.registry import backend_needs, load_backend
    from fp4check.reports.terminal import stdout_console, styled
    from fp4check.scenarios import pick_layer

    if not torch.cuda.is_available():
        raise InputError("fp4check graph needs a CUDA GPU (torch sees none): run it on the GPU machine")
    be = load_backend(backend)
    unmet = backend_needs(be).unmet()
    if unmet:
        raise InputError(f"backend {backend} cannot run here: {unmet}")
    ckpt = open_checkpoint(checkpoint)
    idx = pick_layer(ckpt, "natural", layer, None)
    results = moe_graph_checks(be, ckpt, idx, tokens, seed)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results]))
    else:
        from rich.table import Table

        t = Table(title=f"CUDA graph: backend {be.name}, layer {idx}, {tokens} tokens", title_justify="left")
        for col in ("op", "status", "replays", "max |replay - eager|", "why"):
            t.add_column(col, overflow="fold")
        for r in results:
            t.add_row(r.op, styled(r.status), str(r.replays), f"{r.max_abs_diff:.3g}", r.reason)
        stdout_console().print(t)
    sys.exit(1 if any(r.status == "fail" for r in results) else 0)
