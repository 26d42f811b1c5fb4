"""DeepSeek-V4 attention as served, in plain torch: each projection in its checkpoint format with the
activation quantization the runtime uses for it (kernels.emulated.shared.linear_as_served: FP8 block
GEMMs with 1x128 power-of-two activation scales, NVFP4 with the projection's input scale, BF16 plain),
the kv through the paged FP8 cache (kernels.emulated.kv_cache), and attention over what the cache gives
back. The compressors run in float32 on bf16 weights and wo_a is dequantized to a bf16-input einsum, as
DeepSeek's reference runs them.

`attention_forward` (prefill) and `PagedDecoder` (one token at a time over the SWA ring and the
compressed cache) take `ops`: any object with the contract's attention ops, so a plugin that replaces
one op, or an injected fault, runs inside the whole pipeline.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import AttentionOutput, AttentionWeights
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.kernels.emulated.shared import linear_as_served
from fp4check.references import attention as ref
from fp4check.references.common import rms_norm
from fp4check.references.rope import apply_rope, rope_angles
from fp4check.references.sparse_attention import (
    hca_indices,
    indexer_scores,
    indexer_topk,
    top_k_stable,
    window_indices,
)


# rope=, freqs= let a fault swap the rotation (rotate-half pairs, YaRN on an SWA layer) in one place
def attn_q(
    x: torch.Tensor, w: AttentionWeights, positions: torch.Tensor, rope=apply_rope, freqs=None
) -> tuple[torch.Tensor, torch.Tensor]:
    p = w.params
    qr = rms_norm(linear_as_served(x, w.linears["wq_a"]).float(), p.q_norm, p.eps).to(torch.bfloat16)
    q = linear_as_served(qr, w.linears["wq_b"]).float().view(x.shape[0], p.n_heads, p.head_dim)
    q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + p.eps)
    angles = rope_angles(positions, p.freqs if freqs is None else freqs)
    return qr, rope(q, angles, p.rope_dim).to(torch.bfloat16)


def attn_kv(x: torch.Tensor, w: AttentionWeights, positions: torch.Tensor, rope=apply_rope, freqs=None) -> torch.Tensor:
    p = w.params
    kv = rms_norm(linear_as_served(x, w.linears["wkv"]).float(), p.kv_norm, p.eps)
    angles = rope_angles(positions, p.freqs if freqs is None else freqs)
    return rope(kv, angles, p.rope_dim).to(torch.bfloat16)


def compressor(x: torch.Tensor, w: AttentionWeights) -> torch.Tensor:
    p = w.params
    return ref.compressed_entries(x, p.compressor, p.ratio, p)


def indexer(
    x: torch.Tensor, qr: torch.Tensor, w: AttentionWeights, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    p = w.params
    keys = ref.compressed_entries(x, p.indexer, p.ratio, p)
    q = linear_as_served(qr, w.linears["indexer.wq_b"]).float().view(qr.shape[0], p.index_heads, p.index_dim)
    q = apply_rope(q, rope_angles(positions, p.freqs), p.rope_dim).to(torch.bfloat16)
    weights = (x.float() @ p.indexer["weights_proj"].t()) * (p.index_dim**-0.5 * p.index_heads**-0.5)
    scores = indexer_scores(q, keys, weights)
    # prefill: causal visibility per query position; positions are 0..T-1 here
    return scores, indexer_topk(scores, p.index_topk, p.ratio)


def attn_out(
    core: torch.Tensor, w: AttentionWeights, positions: torch.Tensor, rope=apply_rope, freqs=None
) -> torch.Tensor:
    p = w.params
    t = core.shape[0]
    o = core
    if rope is not None:  # None: the inverse rotation left out (a fault)
        o = rope(core, rope_angles(positions, p.freqs if freqs is None else freqs), p.rope_dim, inverse=True)
    groups = o.float().reshape(t, p.o_groups, -1)
    wa = w.linears["wo_a"].dequantize().view(p.o_groups, -1, groups.shape[-1])
    z = torch.einsum("tgk,grk->tgr", groups, wa).reshape(t, -1).to(torch.bfloat16)
    return linear_as_served(z, w.linears["wo_b"])


class AttentionOps:
    """The emulated attention ops, for composition into pipelines (and subclassing by faults)."""

    attn_q = staticmethod(attn_q)
    attn_kv = staticmethod(attn_kv)
    compressor = staticmethod(compressor)
    indexer = staticmethod(indexer)
    kv_cache_write = staticmethod(kvc.kv_cache_write)
    kv_cache_read = staticmethod(kvc.kv_cache_read)
    paged_attention = staticmethod(kvc.paged_attention)
    attn_out = staticmethod(attn_out)


def prefill_layout(n_tokens: int, n_entries: int, seed: int) -> tuple[kvc.PagePool, torch.Tensor]:
    """A page pool and the physical slot of every prefill row (tokens, then compressed entries)."""
    block = kvc.SWA_BLOCK
    nb_tok, nb_ent = kvc.blocks_for(n_tokens, block), kvc.blocks_for(n_entries, block)
    pool = kvc.PagePool(nb_tok + nb_ent + 2, block, seed)
    tok = kvc.slots_of(pool.table(nb_tok), block, torch.arange(n_tokens))
    ent = kvc.slots_of(pool.table(nb_ent), block, torch.arange(n_entries))
    return pool, torch.cat([tok, ent])


def attention_forward(
    x: torch.Tensor, w: AttentionWeights, positions: torch.Tensor, ops=AttentionOps, seed: int = 0
) -> AttentionOutput:
    """A prefill over x bf16 [T, D] through `ops`: projections, compressor and indexer, every kv row
    written to the paged FP8 cache and read back, paged attention, output projection."""
    p = w.params
    t = x.shape[0]
    qr, q = ops.attn_q(x, w, positions)
    kv = ops.attn_kv(x, w, positions)
    stages: dict[str, object] = {"q": q, "kv": kv}
    extra = None
    entries = kv[:0]
    if p.ratio:
        entries = ops.compressor(x, w)
        stages["compress"] = entries
        if p.ratio == 4:
            stages["index_scores"], extra = ops.indexer(x, qr, w, positions)
            stages["indexer"] = extra
        else:
            extra = hca_indices(t, p.ratio, entries.shape[0])
    rows = torch.cat([kv, entries])
    pool, slots = prefill_layout(t, entries.shape[0], seed)
    ops.kv_cache_write(pool.pages, pool.block, slots, rows)
    stages["kv_write"] = kvc.cache_rows(pool.pages, pool.block, slots)
    stages["kv_read"] = ops.kv_cache_read(pool.pages, pool.block, slots)
    idx = ref.key_set(window_indices(t, p.window), extra, t)
    core = ops.paged_attention(q, pool.pages, pool.block, torch.where(idx >= 0, slots[idx.clamp(min=0)], -1), p.sink)
    stages["core"] = core
    out = ops.attn_out(core, w, positions)
    stages["out"] = out
    return AttentionOutput(out, stages)


class PagedDecoder:
    """Decode one token at a time as a serving runtime does: the window's kv in the SWA ring (logical slot
    position % window), compressed entries in their own block table, the compressors' partial windows in
    float32 state, one paged attention over the window's and the chosen entries' slots. Both tables draw
    pages of one block size from one pool (vLLM keeps separate caches with their own block sizes; one
    pool lets a single paged_attention call cover both). The indexer's keys stay in bf16, not FP8-cached."""

    def __init__(self, w: AttentionWeights, ops=AttentionOps, seed: int = 0, max_entries: int = 4096):
        p = self.p = w.params
        self.w, self.ops, self.t = w, ops, 0
        block = kvc.SWA_BLOCK
        ring_blocks = kvc.blocks_for(p.window, block)
        entry_blocks = kvc.blocks_for(max_entries, block) if p.ratio else 0
        self.pool = kvc.PagePool(ring_blocks + entry_blocks + 1, block, seed)
        self.ring = self.pool.table(ring_blocks)
        self.entry_table = self.pool.table(entry_blocks) if p.ratio else None
        self.main = ref.WindowPool(p.compressor, p.ratio) if p.ratio else None
        self.index = ref.WindowPool(p.indexer, p.ratio) if p.ratio == 4 else None

    def prefill(self, x: torch.Tensor) -> None:
        """Fill the state from a prompt x [P, D] without producing outputs (the prefill's cache writes)."""
        for i in range(x.shape[0]):
            self._advance(x[i : i + 1])

    def _write(self, table: torch.Tensor, logical: int, kv: torch.Tensor) -> None:
        slot = kvc.slots_of(table, self.pool.block, torch.tensor([logical]))
        self.ops.kv_cache_write(self.pool.pages, self.pool.block, slot, kv)

    def _advance(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, t, pos = self.p, self.t, torch.tensor([self.t])
        qr, q = self.ops.attn_q(x_t, self.w, pos)
        self._write(self.ring, t % p.window, self.ops.attn_kv(x_t, self.w, pos))
        if self.main is not None:
            before = len(self.main.entries)
            self.main.push(x_t, t, p)
            if len(self.main.entries) > before:
                self._write(self.entry_table, before, self.main.entries[-1].unsqueeze(0))
            if self.index is not None:
                self.index.push(x_t, t, p)
        self.t += 1
        return qr, q

    def _picks(self, x_t: torch.Tensor, qr: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Entries this query attends to: all of them (HCA), or the indexer's top-k (CSA)."""
        p, n = self.p, len(self.main.entries)
        if self.index is None:
            return torch.arange(n)
        iq = linear_as_served(qr, self.w.linears["indexer.wq_b"]).float().view(1, p.index_heads, p.index_dim)
        iq = apply_rope(iq, rope_angles(pos, p.freqs), p.rope_dim).to(torch.bfloat16)
        iw = (x_t.float() @ p.indexer["weights_proj"].t()) * (p.index_dim**-0.5 * p.index_heads**-0.5)
        scores = indexer_scores(iq, self.index.stacked(p.index_dim), iw)
        return top_k_stable(scores, min(p.index_topk, n))[1][0]

    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """x_t bf16 [1, D] at the next position -> attention output bf16 [1, D]."""
        p, t = self.p, self.t
        pos = torch.tensor([t])
        qr, q = self._advance(x_t)
        window = torch.arange(max(0, t - p.window + 1), t + 1)
        slots = kvc.slots_of(self.ring, self.pool.block, window % p.window)
        if self.main is not None and self.main.entries:
            picks = self._picks(x_t, qr, pos)
            slots = torch.cat([slots, kvc.slots_of(self.entry_table, self.pool.block, picks)])
        core = self.ops.paged_attention(q, self.pool.pages, self.pool.block, slots.unsqueeze(0), p.sink)
        return self.ops.attn_out(core, self.w, pos)
