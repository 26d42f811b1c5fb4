"""`fp4check info`: what a checkpoint holds: config, layer schedule, formats per tensor family, sizes."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import click
from rich.table import Table

from fp4check.checkpoint import FORMAT_NAMES, Checkpoint
from fp4check.layout import layer_of
from fp4check.options import checkpoint_option, json_option, open_checkpoint
from fp4check.reports.terminal import stdout_console

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def family_pattern(family: str) -> str:
    """layers.3.ffn.experts.17.w1 -> layers.*.ffn.experts.*.w1"""
    return _INDEX.sub("*", family)


def _merge_siblings(rows: list[dict]) -> list[dict]:
    """Fold patterns that differ only in their last name and share a format: attn.{wq_a,wkv,...}."""
    merged: dict[tuple[str, str], dict] = {}
    for r in rows:
        parent, _, leaf = r["pattern"].rpartition(".")
        m = merged.setdefault(
            (parent, r["format"]), {"leaves": [], "format": r["format"], "families": 0, "tensors": 0, "bytes": 0}
        )
        m["leaves"].append(leaf)
        for k in ("families", "tensors", "bytes"):
            m[k] += r[k]
    out = []
    for (parent, _), m in merged.items():
        leaves = sorted(m.pop("leaves"))
        name = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        out.append({"pattern": f"{parent}.{name}" if parent else name, **m})
    return sorted(out, key=lambda r: -r["bytes"])


def describe(ckpt: Checkpoint) -> dict:
    """Everything `info` shows, as plain data. Reads every shard header (not the tensor data)."""
    cfg = ckpt.config
    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"families": 0, "tensors": 0, "bytes": 0})
    per_layer: dict[object, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    total = 0
    for fam, entries, fmt, _shape in ckpt.survey():
        nbytes = sum(e.nbytes for e in entries.values())
        g = groups[(family_pattern(fam), fmt)]
        g["families"] += 1
        g["tensors"] += len(entries)
        g["bytes"] += nbytes
        total += nbytes
        part = "experts" if ".ffn.experts." in fam else ("attention" if ".attn.w" in fam else None)
        if part:
            per_layer[layer_of(fam)][part].add(fmt)
    layers = [
        {
            "index": li.index,
            "type": li.layer_type,
            "compress_ratio": li.compress_ratio,
            "routing": li.routing,
            "rope_theta": cfg.rope_for_layer(li.index).theta,
            "yarn": cfg.rope_for_layer(li.index).yarn,
            "attention_format": "/".join(sorted(per_layer[li.index]["attention"])) or "-",
            "experts_format": "/".join(sorted(per_layer[li.index]["experts"])) or "-",
        }
        for li in cfg.layers
    ]
    q = cfg.quant
    return {
        "path": str(ckpt.path),
        "naming": ckpt.naming,
        "config_form": cfg.source_form,
        "fingerprint": ckpt.fingerprint(),
        "shards": len(ckpt.shard_files),
        "tensors": len(ckpt.names()),
        "total_bytes": total,
        "model": {
            "hidden_size": cfg.hidden_size,
            "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads,
            "head_dim": cfg.head_dim,
            "rope_dims": cfg.qk_rope_head_dim,
            "q_lora_rank": cfg.q_lora_rank,
            "o_groups": cfg.o_groups,
            "routed_experts": cfg.n_routed_experts,
            "experts_per_token": cfg.num_experts_per_tok,
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "hash_layers": cfg.num_hash_layers,
            "mtp_layers": cfg.num_nextn_predict_layers,
            "swiglu_limit": cfg.swiglu_limit,
            "routed_scaling_factor": cfg.routed_scaling_factor,
            "vocab_size": cfg.vocab_size,
        },
        "declared_quantization": {
            "quant_method": q.quant_method,
            "quant_algo": q.quant_algo,
            "moe_quant_algo": q.moe_quant_algo,
            "producer": q.producer,
            "scale_fmt": q.scale_fmt,
            "group_size": q.group_size,
        },
        "layers": layers,
        "formats": _merge_siblings([{"pattern": p, "format": f, **v} for (p, f), v in groups.items()]),
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command()
@checkpoint_option
@json_option
def info(checkpoint, as_json: bool) -> None:
    """Checkpoint summary: config, layer schedule (type, compress ratio, routing, rope), the detected
    format of each tensor family, sizes and shards."""
    ckpt = open_checkpoint(checkpoint)
    d = describe(ckpt)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    con = stdout_console()
    m, q = d["model"], d["declared_quantization"]
    con.print(
        f"[bold]{d['path']}[/bold]  ({d['naming']} names, {d['config_form']} config, fingerprint {d['fingerprint']})"
    )
    con.print(
        f"hidden {m['hidden_size']}, {m['layers']} layers + {m['mtp_layers']} MTP, "
        f"{m['heads']} heads x {m['head_dim']} (rope {m['rope_dims']}), "
        f"{m['routed_experts']} experts x {m['moe_intermediate_size']}, top-{m['experts_per_token']}, "
        f"{m['hash_layers']} hash layers, swiglu limit {m['swiglu_limit']}"
    )
    declared = ", ".join(f"{k}={v}" for k, v in q.items() if v is not None) or "none (unquantized)"
    con.print(f"declared quantization: {declared}")
    con.print(f"{d['tensors']} tensors, {_size(d['total_bytes'])} in {d['shards']} shard(s)")
    lt = Table(title="layer schedule", title_justify="left")
    for col in ("layer", "type", "ratio", "routing", "rope", "attention", "experts"):
        lt.add_column(col, justify="right" if col in ("layer", "ratio") else "left")
    for li in d["layers"]:
        rope = f"{li['rope_theta']:g}" + (" yarn" if li["yarn"] else "")
        lt.add_row(
            str(li["index"]),
            li["type"],
            str(li["compress_ratio"]),
            li["routing"],
            rope,
            li["attention_format"],
            li["experts_format"],
        )
    con.print(lt)
    ft = Table(title="tensor families by format", title_justify="left")
    ft.add_column("family", overflow="fold")
    for col in ("format", "families", "tensors", "size"):
        ft.add_column(col, justify="left" if col == "format" else "right")
    for row in d["formats"]:
        ft.add_row(row["pattern"], row["format"], str(row["families"]), str(row["tensors"]), _size(row["bytes"]))
    con.print(ft)
    used = sorted({r["format"] for r in d["formats"]} & set(FORMAT_NAMES))
    for f in used:
        con.print(f"  [dim]{f}: {FORMAT_NAMES[f]}[/dim]")
