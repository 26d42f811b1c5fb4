"""One layer's attention weights from a checkpoint: the served view (each projection as stored, for the
kernels) and the float32 view (for the reference)."""

from __future__ import annotations

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.contract import AttentionWeights
from fp4check.references.attention import AttentionParams
from fp4check.references.rope import rope_frequencies

LINEARS = ("wq_a", "wq_b", "wkv", "wo_a", "wo_b")
COMPRESSOR = ("wkv", "wgate", "ape", "norm")


def load_attention_weights(ckpt: Checkpoint, layer: int) -> AttentionWeights:
    cfg = ckpt.config
    info = cfg.layer(layer)
    p = f"layers.{layer}.attn."

    def f(name: str) -> torch.Tensor:
        return ckpt.weight(p + name).dequantize()

    linears = {n: ckpt.weight(p + n) for n in LINEARS}
    compressor = indexer = None
    if info.compress_ratio:
        compressor = {n: f(f"compressor.{n}") for n in COMPRESSOR}
    if info.compress_ratio == 4:
        linears["indexer.wq_b"] = ckpt.weight(p + "indexer.wq_b")
        indexer = {n: f(f"indexer.compressor.{n}") for n in COMPRESSOR}
        indexer["wq_b"] = linears["indexer.wq_b"].dequantize()
        indexer["weights_proj"] = f("indexer.weights_proj")
    params = AttentionParams(
        **{n: w.dequantize() for n, w in linears.items() if n in LINEARS},
        q_norm=f("q_norm"),
        kv_norm=f("kv_norm"),
        sink=f("attn_sink"),
        n_heads=cfg.num_attention_heads,
        head_dim=cfg.head_dim,
        rope_dim=cfg.qk_rope_head_dim,
        o_groups=cfg.o_groups,
        ratio=info.compress_ratio,
        window=cfg.sliding_window,
        eps=cfg.rms_norm_eps,
        freqs=rope_frequencies(cfg.rope_for_layer(layer), cfg.qk_rope_head_dim),
        compressor=compressor,
        indexer=indexer,
        index_heads=cfg.index_n_heads,
        index_dim=cfg.index_head_dim,
        index_topk=cfg.index_topk,
    )
    compress_freqs = rope_frequencies(cfg.rope_compress, cfg.qk_rope_head_dim)
    return AttentionWeights(
        layer=layer,
        layer_type=info.layer_type,
        linears=linears,
        params=params,
        extra={"compress_freqs": compress_freqs},
    )
