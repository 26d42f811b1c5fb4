"""The chain check: embedding -> layers A..B -> (after the last layer) hc_head, norm, logits, run by the
reference and by the backend side by side, each side on its own upstream.

Rows per layer (propagated: the backend's chain so far; isolated: the backend's layer on the reference's
streams at that depth, which says which layer introduces the error): hc.attn_pre, attn.out, hc.attn_post,
hc.ffn_pre, moe.out, out; then head.h and head.logits (with top-1 token agreement in `overlap`). Layers
before A run on the reference only, so both sides enter layer A with the same streams. Hash-routed layers
route by token id: the chain passes the ids to every layer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.registry import backend_needs
from fp4check.layer_forward import (
    attention_runs,
    backend_layer,
    embed_streams,
    head_logits,
    load_layer,
    reference_layer,
    set_layer_scales,
)
from fp4check.metrics import compare
from fp4check.rows import make_row, skip_row
from fp4check.thresholds import Thresholds

# (stage key, gate): propagated gates are loose on purpose (they catch garbage: NaN, a collapsed
# cosine); the isolated per-layer rows carry the layer gate and say which layer adds the error
CHAIN_STAGES = (
    ("hc.attn_pre", "chain.hc"),
    ("attn.out", "chain.attn_out"),
    ("hc.attn_post", "chain.hc"),
    ("hc.ffn_pre", "chain.hc"),
    ("moe.out", "chain.moe_out"),
    ("out", "chain.out"),
)


@dataclass
class ChainCheck:
    first: int
    last: int
    token_ids: torch.Tensor
    seed: int
    ref_mode: str = "served"
    act_scales: str = "auto"
    dump: Path | None = None


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def chain_rows(ckpt: Checkpoint, backend, c: ChainCheck, thresholds: Thresholds, ctx: dict, progress=None) -> list:
    cfg = ckpt.config
    ids = c.token_ids
    base = {
        **ctx,
        "check": "chain",
        "scenario": "natural",
        "seed": c.seed,
        "backend": backend.name,
        "tokens": int(ids.numel()),
        "ref_mode": c.ref_mode,
        "phase": "prefill",
    }
    rows: list[dict] = []
    unmet = backend_needs(backend).unmet()
    if unmet or not attention_runs(backend):
        why = f"cannot run here: {unmet}" if unmet else "has no attention_forward nor the attention fine ops"
        return [skip_row(base, "chain", "chain", f"backend {backend.name} {why}")]
    emulated = backend if backend.name == "emulated" else EmulatedBackend()

    def add(sid, gate, against, propagation, got, want, extra=None, secs=math.nan, **kw):
        if against == "emulated" and backend.name == "reference":
            return  # conformance with the NVFP4 pipeline is not a question the float reference answers
        metric, threshold = thresholds.gate(gate, against)
        m = compare(got.float(), want.float())
        m.update(extra or {})
        shape = "x".join(map(str, got.shape))
        rows.append(
            make_row({**base, **kw}, sid, gate, against, propagation, m, metric, threshold, seconds=secs, shape=shape)
        )

    ref_s = embed_streams(ckpt, ids)
    for n in range(c.first):  # the layers before the range: reference only
        ref_s = reference_layer(ref_s, load_layer(ckpt, n), ids, c.ref_mode)["out"]
    got_s, emu_s = ref_s, ref_s
    dumps: dict[str, dict[str, torch.Tensor]] = {"reference": {}, "backend": {}}
    dumps["reference"]["streams.in"] = ref_s
    dumps["backend"]["streams.in"] = got_s
    for n in range(c.first, c.last + 1):
        info = cfg.layers[n]
        kw = {"layer": n, "layer_type": info.layer_type}
        lw = load_layer(ckpt, n)
        ref = reference_layer(ref_s, lw, ids, c.ref_mode)
        kw["act_scales"] = set_layer_scales(lw, ref["moe_in"], ids, c.act_scales)
        t0 = time.perf_counter()
        try:
            got = backend_layer(backend, got_s, lw, ids, c.seed)
            iso = backend_layer(backend, ref_s, lw, ids, c.seed)
        except Exception as err:  # a kernel that raises is a result; the chain stops here
            rows.append(
                make_row(
                    {**base, **kw},
                    f"L{n}.out",
                    "layer.out",
                    "reference",
                    "propagated",
                    {},
                    "cosine",
                    math.nan,
                    status="error",
                    message=f"{type(err).__name__}: {err}",
                )
            )
            return rows
        secs = time.perf_counter() - t0
        emu = got if emulated is backend else backend_layer(emulated, emu_s, lw, ids, c.seed)
        for key, gate in CHAIN_STAGES:
            sid = f"L{n}.{key}"
            add(sid, gate, "reference", "propagated", got[key], ref[key], secs=secs, **kw)
            add(sid, gate, "emulated", "propagated", got[key], emu[key], secs=secs, **kw)
        add(f"L{n}.out", "layer.out", "reference", "isolated", iso["out"], ref["out"], **kw)
        ref_s, got_s, emu_s = ref["out"], got["out"], emu["out"]
        dumps["reference"][f"layers.{n}.streams"] = ref_s
        dumps["backend"][f"layers.{n}.streams"] = got_s
        if progress is not None:
            progress(n - c.first + 1, c.last - c.first + 1, f"layer {n}")
    if c.last == cfg.num_hidden_layers - 1:
        (rh, rl), (gh, gl), (eh, el) = head_logits(ckpt, ref_s), head_logits(ckpt, got_s), head_logits(ckpt, emu_s)
        kw = {"layer": None, "layer_type": "head"}
        add("head.h", "head.h", "reference", "propagated", gh, rh, **kw)
        add("head.h", "head.h", "emulated", "propagated", gh, eh, **kw)
        add("head.logits", "head.logits", "reference", "propagated", gl, rl, {"overlap": _top1(gl, rl)}, **kw)
        add("head.logits", "head.logits", "emulated", "propagated", gl, el, {"overlap": _top1(gl, el)}, **kw)
        dumps["reference"]["head.h"], dumps["reference"]["logits"] = rh, rl
        dumps["backend"]["head.h"], dumps["backend"]["logits"] = gh, gl
    if c.dump is not None:
        write_dump(c.dump, dumps, ids)
    return rows


def write_dump(directory: Path, dumps: dict, ids: torch.Tensor) -> None:
    """reference.safetensors and backend.safetensors: streams.in, layers.N.streams [T, n_hc, D], head.h,
    logits (fp32), token_ids."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for side, tensors in dumps.items():
        out = {k: v.contiguous() for k, v in tensors.items()}
        out["token_ids"] = ids.contiguous()
        save_file(out, str(directory / f"{side}.safetensors"))
