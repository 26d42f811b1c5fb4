"""`fp4check chain`: embedding, layers, hc head, norm and logits, the backend beside the reference."""

from __future__ import annotations

from pathlib import Path

import click

from fp4check.commands.checks import _faults, _run, base_spec, chain_options, ref_mode_option

DEFAULT_PROMPT_LEN = 256  # crosses a C128 window and many C4 windows


def parse_layers(text: str | None, n_layers: int) -> tuple[int, int]:
    """ "A-B" or "N" -> (first, last), both in range."""
    from fp4check.errors import InputError

    if text is None:
        return 0, n_layers - 1
    a, _, b = text.partition("-")
    try:
        first, last = int(a), int(b or a)
    except ValueError:
        raise InputError(f"--layers takes A-B or N (e.g. 0-3), got {text!r}") from None
    if not (0 <= first <= last < n_layers):
        raise InputError(f"--layers {text} is out of range: this checkpoint has layers 0..{n_layers - 1}")
    return first, last


def parse_token_ids(text: str | None, prompt_len: int, vocab: int, seed: int) -> list[int]:
    from fp4check.errors import InputError

    if text is None:
        if not 1 <= prompt_len <= 65536:
            raise InputError(f"--prompt-len {prompt_len} is out of range (1..65536)")
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InputError(f"--tokens takes comma-separated token ids, got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < vocab]
    if not ids or bad:
        raise InputError(f"--tokens needs ids in 0..{vocab - 1}" + (f"; got {bad[:5]}" if bad else ""))
    return ids


def _depth_summary(rows: list[dict], con) -> None:
    """Cosine along depth: one line per layer, propagated and isolated, worst first marked."""
    from rich.table import Table

    table = Table(title="along depth (layer output vs reference)")
    for col in ("layer", "type", "propagated", "isolated", "NaN"):
        table.add_column(col, justify="right" if col != "type" else "left")
    by_layer: dict = {}
    for r in rows:
        if r["compared_to"] == "reference" and (r["stage"].endswith(".out") and r["stage"].count(".") == 1):
            by_layer.setdefault(r["layer"], {"type": r["layer_type"]})[r["propagation"]] = r
    for layer, d in sorted(by_layer.items()):
        p, i = d.get("propagated"), d.get("isolated")

        def fmt(r):
            if r is None or r["value"] is None:
                return "-"
            colour = "green" if r["status"] == "pass" else "red"
            return f"[{colour}]{r['value']:.6f}[/]"

        nan = (p or {}).get("nan_out") or 0
        table.add_row(str(layer), d["type"], fmt(p), fmt(i), f"[red]{nan}[/]" if nan else "0")
    con.print(table)


@click.command()
@click.option(
    "--layers", default=None, metavar="A-B", help="Layers to run (default: all); earlier ones run on the reference."
)
@click.option("--tokens", "token_ids", default=None, metavar="IDS", help="Comma-separated token ids.")
@click.option(
    "--prompt-len",
    type=int,
    default=DEFAULT_PROMPT_LEN,
    show_default=True,
    help="Seeded random token ids of this length (when --tokens is not given).",
)
@ref_mode_option
@click.option(
    "--dump",
    type=click.Path(path_type=Path),
    default=None,
    help="Write reference.safetensors and backend.safetensors (per-layer streams, head, logits) here.",
)
@chain_options
def chain(layers: str | None, token_ids: str | None, prompt_len: int, ref_mode: str, dump: Path | None, **opts) -> None:
    """Several layers in sequence and the head: a row per stage per layer (the backend on its own
    upstream, and each layer alone on the reference's streams), the logits, and cosine along depth."""
    from fp4check.kernels.registry import load_backend
    from fp4check.options import open_checkpoint
    from fp4check.thresholds import Thresholds

    ckpt = open_checkpoint(opts["checkpoint"])
    load_backend(opts["backend"], _faults(opts))
    Thresholds.load(opts["thresholds"], opts["config"])
    cfg = ckpt.config
    first, last = parse_layers(layers, cfg.num_hidden_layers)
    ids = parse_token_ids(token_ids, prompt_len, cfg.vocab_size, opts["seed"])
    spec = {
        **base_spec(ckpt, opts),
        "kind": "chain",
        "check": "chain",
        "layer": first,
        "tokens": len(ids),
        "first": first,
        "last": last,
        "token_ids": ids,
        "ref_mode": ref_mode,
        "dump": str(dump) if dump else None,
    }
    title = f"chain: layers {first}-{last}" + (" + head" if last == cfg.num_hidden_layers - 1 else "")
    title += f", {len(ids)} tokens"
    meta = {"ref_mode": ref_mode, "layers": [first, last], "token_ids": ids}
    _run(ckpt, [spec], opts, title=title, extra_meta=meta, summary=_depth_summary)
