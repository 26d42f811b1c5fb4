"""DeepSeek-V4 attention of one layer (shared/spec/deepseek_v4.md §2.5-2.9), float32 math on dequantized
weights, tensors stored in bf16 where DeepSeek's reference stores them (qr, q, kv, compressed entries,
the attention output before the projection).

Prefill (`attention_prefill`) computes every stage for a whole sequence; `DecodeState` decodes one token
at a time, keeping the window's kv, the compressor's partial window (and, for the overlapping CSA
compressor, the previous window's first half) and the entries emitted so far. Decoding token t must give
row t of the prefill: a test and a per-run check, not an assumption.

Modes: "exact" keeps kv in bf16; "served" quantizes the no-rope dims of every kv entry (window and
compressed) to e4m3 with power-of-two scales per 64 channels and back (DS-REF act_quant(kv[..., :-rd],
64, ...)), which is what the FP8 KV cache stores.

Differences from transformers' deepseek_v4 (the parity oracle), all of which cancel or vanish in exact
mode: DeepSeek rotates the indexer's q and keys with a Walsh-Hadamard matrix and simulates FP4 on the
indexer keys; transformers omits both. The Hadamard is orthogonal and applied to both sides, so it cancels
in q.k; the FP4 simulation is left out here in both modes (it only changes which near-tied entries the
top-k keeps), so "served" differs from "exact" by the FP8 KV rounding alone. DeepSeek's reference also runs
its projections through FP8 GEMMs with quantized activations: that is the served pipeline of the emulated
backend, not this reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4check.references.common import rms_norm
from fp4check.references.compressor import compressor_logits, pool_csa, pool_hca
from fp4check.references.fp8 import act_dequant_fp8, act_quant_fp8
from fp4check.references.rope import apply_rope, rope_angles
from fp4check.references.sparse_attention import (
    hca_indices,
    indexer_scores,
    indexer_topk,
    sparse_attention,
    top_k_stable,
    window_indices,
)

KV_FP8_BLOCK = 64
MODES = ("served", "exact")


@dataclass
class AttentionParams:
    """One layer's attention weights as float32 tensors, and the numbers that shape it."""

    wq_a: torch.Tensor  # [q_lora, D]
    q_norm: torch.Tensor  # [q_lora]
    wq_b: torch.Tensor  # [H*d, q_lora]
    wkv: torch.Tensor  # [d, D]
    kv_norm: torch.Tensor  # [d]
    sink: torch.Tensor  # [H]
    wo_a: torch.Tensor  # [G*o_lora, H*d/G]
    wo_b: torch.Tensor  # [D, G*o_lora]
    n_heads: int
    head_dim: int
    rope_dim: int
    o_groups: int
    ratio: int  # 0 (SWA), 4 (CSA) or 128 (HCA)
    window: int
    eps: float
    freqs: torch.Tensor  # [rope_dim/2] this layer's RoPE frequencies
    compressor: dict | None = None  # {"wkv", "wgate", "ape", "norm"}
    indexer: dict | None = None  # {"wq_b", "weights_proj", "wkv", "wgate", "ape", "norm"}
    index_heads: int = 0
    index_dim: int = 0
    index_topk: int = 0


def fp8_kv(kv: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """The no-rope dims through e4m3 with power-of-two scales per 64 channels (bf16 in, bf16 out, exact:
    e4m3 values times powers of two are bf16 numbers); the rope dims untouched."""
    nope = kv[..., :-rope_dim]
    q, s = act_quant_fp8(nope, KV_FP8_BLOCK)
    return torch.cat([act_dequant_fp8(q, s, KV_FP8_BLOCK).to(kv.dtype), kv[..., -rope_dim:]], dim=-1)


def _served(kv: torch.Tensor, p: AttentionParams, mode: str) -> torch.Tensor:
    return fp8_kv(kv, p.rope_dim) if mode == "served" else kv


def q_projection(x: torch.Tensor, p: AttentionParams, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x bf16 [T, D] -> (qr bf16 [T, q_lora], q bf16 [T, H, d]): wq_a, q_norm, wq_b, per-head unweighted
    RMSNorm, RoPE on the last rope dims."""
    qr = rms_norm(x.float() @ p.wq_a.t(), p.q_norm, p.eps).to(torch.bfloat16)
    q = (qr.float() @ p.wq_b.t()).view(x.shape[0], p.n_heads, p.head_dim)
    q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + p.eps)
    return qr, apply_rope(q, rope_angles(positions, p.freqs), p.rope_dim).to(torch.bfloat16)


def kv_projection(x: torch.Tensor, p: AttentionParams, positions: torch.Tensor) -> torch.Tensor:
    """x bf16 [T, D] -> kv bf16 [T, d]: wkv, kv_norm, RoPE (before any FP8)."""
    kv = rms_norm(x.float() @ p.wkv.t(), p.kv_norm, p.eps)
    return apply_rope(kv, rope_angles(positions, p.freqs), p.rope_dim).to(torch.bfloat16)


def _entries(pooled: torch.Tensor, c: dict, first: int, ratio: int, p: AttentionParams) -> torch.Tensor:
    """Pooled windows -> normalized entries rotated at w * ratio (bf16 before the norm, as DS-REF)."""
    normed = rms_norm(pooled.to(torch.bfloat16).float(), c["norm"], p.eps)
    positions = (torch.arange(pooled.shape[0]) + first) * ratio
    return apply_rope(normed, rope_angles(positions, p.freqs), p.rope_dim).to(torch.bfloat16)


def _pool(a: torch.Tensor, z: torch.Tensor, ratio: int) -> torch.Tensor:
    return pool_csa(a, z) if ratio == 4 else pool_hca(a, z)


def compressed_entries(x: torch.Tensor, c: dict, ratio: int, p: AttentionParams) -> torch.Tensor:
    """[W, d_c] bf16 entries of the complete windows of x (the main compressor or the indexer's)."""
    a, z = compressor_logits(x, c["wkv"], c["wgate"], c["ape"], ratio)
    return _entries(_pool(a, z, ratio), c, 0, ratio, p)


def indexer_q_weights(x: torch.Tensor, qr: torch.Tensor, p: AttentionParams, positions: torch.Tensor):
    """(q_I bf16 [T, IH, ID] rotated on its last rope dims, weights [T, IH] with ID^-0.5 * IH^-0.5 folded in)."""
    ix = p.indexer
    q = (qr.float() @ ix["wq_b"].t()).view(qr.shape[0], p.index_heads, p.index_dim)
    q = apply_rope(q, rope_angles(positions, p.freqs), p.rope_dim).to(torch.bfloat16)
    w = (x.float() @ ix["weights_proj"].t()) * (p.index_dim**-0.5 * p.index_heads**-0.5)
    return q, w


def key_set(window_idx: torch.Tensor, extra: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
    """Indices into cat([window kv (n_tokens)], [entries]): the window, then entries offset by n_tokens."""
    if extra is None or extra.shape[1] == 0:
        return window_idx
    return torch.cat([window_idx, torch.where(extra >= 0, extra + n_tokens, extra)], dim=1)


def output_projection(o: torch.Tensor, p: AttentionParams, positions: torch.Tensor) -> torch.Tensor:
    """o [T, H, d] -> inverse RoPE at the query position, grouped wo_a per head group, wo_b -> bf16 [T, D]."""
    t = o.shape[0]
    o = apply_rope(o.to(torch.bfloat16), rope_angles(positions, p.freqs), p.rope_dim, inverse=True)
    groups = o.float().reshape(t, p.o_groups, -1)  # [T, G, H*d/G]
    wa = p.wo_a.view(p.o_groups, -1, groups.shape[-1])  # [G, o_lora, H*d/G]
    z = torch.einsum("tgk,grk->tgr", groups, wa).reshape(t, -1).to(torch.bfloat16)
    return (z.float() @ p.wo_b.t()).to(torch.bfloat16)


def attention_prefill(x: torch.Tensor, p: AttentionParams, mode: str = "served") -> dict[str, torch.Tensor]:
    """Every stage of the layer's attention over x bf16 [T, D] (positions 0..T-1).

    Returns qr, q, kv (before FP8), kv_cache (what attention reads: window kv then entries, FP8-simulated
    in served mode), entries (before FP8), idx (key set [T, K] into kv_cache), and for CSA layers
    index_scores [T, W] and index_topk [T, k]; core (o before inverse RoPE, bf16 [T, H, d]); out bf16 [T, D].
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    t = x.shape[0]
    pos = torch.arange(t)
    qr, q = q_projection(x, p, pos)
    kv = kv_projection(x, p, pos)
    out: dict[str, torch.Tensor] = {"qr": qr, "q": q, "kv": kv}
    extra = None
    entries = kv[:0]
    if p.ratio:
        entries = compressed_entries(x, p.compressor, p.ratio, p)
        if p.ratio == 4:
            keys = compressed_entries(x, p.indexer, p.ratio, p)
            iq, iw = indexer_q_weights(x, qr, p, pos)
            out["index_scores"] = indexer_scores(iq, keys, iw)
            extra = out["index_topk"] = indexer_topk(out["index_scores"], p.index_topk, p.ratio)
        else:
            extra = hca_indices(t, p.ratio, entries.shape[0])
    out["entries"] = entries
    out["kv_cache"] = _served(torch.cat([kv, entries]), p, mode)
    out["idx"] = key_set(window_indices(t, p.window), extra, t)
    core = sparse_attention(q, out["kv_cache"], out["idx"], p.sink, p.head_dim**-0.5)
    out["core"] = core.to(torch.bfloat16)
    out["out"] = output_projection(out["core"], p, pos)
    return out


class WindowPool:
    """A compressor's decode state: the logits of the partial window, the previous window's (CSA)."""

    def __init__(self, c: dict, ratio: int):
        self.c, self.ratio = c, ratio
        self.a: list[torch.Tensor] = []
        self.z: list[torch.Tensor] = []
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.entries: list[torch.Tensor] = []

    def push(self, x_t: torch.Tensor, t: int, p: AttentionParams) -> None:
        xf = x_t.float()
        self.a.append(xf @ self.c["wkv"].t())
        self.z.append(xf @ self.c["wgate"].t() + self.c["ape"][t % self.ratio])
        if len(self.a) < self.ratio:
            return
        a, z = torch.cat(self.a).unsqueeze(0), torch.cat(self.z).unsqueeze(0)  # [1, ratio, c*d_c]
        w = len(self.entries)
        if self.ratio == 4 and self.prev is not None:
            pooled = pool_csa(torch.cat([self.prev[0], a]), torch.cat([self.prev[1], z]))[1:]
        else:
            pooled = _pool(a, z, self.ratio)
        self.entries.append(_entries(pooled, self.c, w, self.ratio, p)[0])
        self.prev, self.a, self.z = (a, z), [], []

    def stacked(self, width: int) -> torch.Tensor:
        return torch.stack(self.entries) if self.entries else torch.zeros(0, width, dtype=torch.bfloat16)


class DecodeState:
    """Token-by-token attention with the state a serving runtime keeps: the window's kv, the compressors'
    partial windows, the entries emitted so far."""

    def __init__(self, p: AttentionParams, mode: str = "served"):
        self.p, self.mode, self.t = p, mode, 0
        self.window_kv: list[torch.Tensor] = []  # served-mode values, the last `window` tokens
        self.main = WindowPool(p.compressor, p.ratio) if p.ratio else None
        self.index = WindowPool(p.indexer, p.ratio) if p.ratio == 4 else None

    def step(self, x_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_t bf16 [1, D] at position self.t -> the same stages as attention_prefill's row t."""
        p, t = self.p, self.t
        pos = torch.tensor([t])
        qr, q = q_projection(x_t, p, pos)
        kv = kv_projection(x_t, p, pos)
        self.window_kv = (self.window_kv + [_served(kv, p, self.mode)[0]])[-p.window :]
        keys = torch.stack(self.window_kv)
        out = {"qr": qr, "q": q, "kv": kv}
        if self.main is not None:
            self.main.push(x_t, t, p)
            entries = self.main.stacked(p.head_dim)
            if self.index is not None:
                self.index.push(x_t, t, p)
                iq, iw = indexer_q_weights(x_t, qr, p, pos)
                scores = indexer_scores(iq, self.index.stacked(p.index_dim), iw)
                # every entry emitted so far is visible to t: the prefill's causal top-k, row t
                picks = top_k_stable(scores, min(p.index_topk, scores.shape[1]))[1]
                out["index_topk"] = picks
            else:
                picks = torch.arange(entries.shape[0]).unsqueeze(0)
            chosen = entries[picks[0][picks[0] >= 0]]
            keys = torch.cat([keys, _served(chosen, p, self.mode)])
        core = sparse_attention(q, keys, torch.arange(keys.shape[0]).unsqueeze(0), p.sink, p.head_dim**-0.5)
        out["core"] = core.to(torch.bfloat16)
        out["out"] = output_projection(out["core"], p, pos)
        self.t += 1
        return out
