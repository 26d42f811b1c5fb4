"""Substitution bisection: which blocks must run on the backend for a failure to reproduce.

A non-local bug (a buffer shared between layers, state carried across calls) passes every single-layer
check: the producer does not reproduce alone. Here the chain runs with a chosen set of blocks (a layer's
attention or MoE) on the backend and every other block on the emulated pipeline, and compares the final
streams with the same chain run entirely on the emulated pipeline. A fresh backend instance per trial,
so state lives only within one run. Starting from all blocks (which must reproduce), chunks are dropped
while the failure persists (halves, then quarters, ... then single blocks: the greedy 1-minimal set of
delta debugging); every trial is a printed step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.layer_forward import (
    LayerWeights,
    backend_attention,
    backend_moe,
    embed_streams,
    hc_post_block,
    hc_pre_block,
    load_layer,
    norm_bf16,
    set_layer_scales,
)
from fp4check.metrics import compare

Unit = tuple[int, str]  # (layer, "attn" | "moe")


@dataclass
class Step:
    on_backend: list[Unit]
    cosine: float
    nan: int
    reproduces: bool

    def as_dict(self) -> dict:
        return {
            "on_backend": [f"L{n}.{b}" for n, b in self.on_backend],
            "cosine": self.cosine,
            "nan": self.nan,
            "reproduces": self.reproduces,
        }


def _mixed_layer(streams, lw: LayerWeights, ids, attn_ops, moe_ops, seed: int) -> torch.Tensor:
    pre = hc_pre_block(None, streams, lw, "attn")
    y = backend_attention(attn_ops, norm_bf16(pre["input"], lw.attn_norm, lw.eps), lw.attn, seed).out
    streams = hc_post_block(None, streams, y, pre)
    pre2 = hc_pre_block(None, streams, lw, "ffn")
    return hc_post_block(
        None, streams, backend_moe(moe_ops, norm_bf16(pre2["input"], lw.ffn_norm, lw.eps), lw.moe, ids), pre2
    )


def run_mixed(ckpt: Checkpoint, weights: list[LayerWeights], ids, units: set[Unit], make_backend, seed: int):
    """Final streams of the chain with `units` on a fresh backend and the rest on the emulated pipeline."""
    backend, clean = make_backend(), EmulatedBackend()
    s = embed_streams(ckpt, ids)
    for lw in weights:
        n = lw.layer
        a = backend if (n, "attn") in units else clean
        m = backend if (n, "moe") in units else clean
        s = _mixed_layer(s, lw, ids, a, m, seed)
    return s


def bisect(
    ckpt: Checkpoint, make_backend, layers: list[int], ids: torch.Tensor, seed: int, threshold: float = 0.9999
) -> tuple[list[Unit] | None, list[Step]]:
    """(the smallest set of blocks found that still reproduces, or None if all of them do not; the steps)."""
    weights = []
    s = embed_streams(ckpt, ids)
    for n in range(max(layers) + 1):  # the MoE activation scales of every layer, from its clean input
        lw = load_layer(ckpt, n)
        clean = EmulatedBackend()
        pre = hc_pre_block(None, s, lw, "attn")
        y = backend_attention(clean, norm_bf16(pre["input"], lw.attn_norm, lw.eps), lw.attn, seed).out
        s2 = hc_post_block(None, s, y, pre)
        set_layer_scales(lw, norm_bf16(hc_pre_block(None, s2, lw, "ffn")["input"], lw.ffn_norm, lw.eps), ids, "auto")
        s = _mixed_layer(s, lw, ids, clean, clean, seed)
        weights.append(lw)
    want = run_mixed(ckpt, weights, ids, set(), EmulatedBackend, seed)
    steps: list[Step] = []

    def trial(units: list[Unit]) -> bool:
        got = run_mixed(ckpt, weights, ids, set(units), make_backend, seed)
        m = compare(got.float(), want.float())
        nan = int(m.get("nan_out") or 0)
        cos = float(m["cosine"]) if m["cosine"] == m["cosine"] else float("nan")
        bad = nan > 0 or not cos >= threshold
        steps.append(Step(list(units), cos, nan, bad))
        return bad

    current = [(n, b) for n in layers for b in ("attn", "moe")]
    if not trial(current):
        return None, steps
    chunk = max(1, len(current) // 2)
    while True:
        i, removed = 0, False
        while i < len(current) and len(current) > 1:
            candidate = current[:i] + current[i + chunk :]
            if candidate and trial(candidate):
                current, removed = candidate, True
            else:
                i += chunk
        if chunk == 1 and not removed:
            return current, steps
        chunk = max(1, chunk // 2) if not removed else chunk
