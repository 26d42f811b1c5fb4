"""Whole decoder layers and the head, for the reference and for a backend (spec §2.1-2.4):

    streams X [T, n_hc, D] -> hc pre (attn) -> attn_norm -> attention -> hc post
                           -> hc pre (ffn)  -> ffn_norm  -> MoE       -> hc post -> X'

and after the last layer hc_head -> norm -> head (logits). The reference runs float32 math on
dequantized weights (attention in the run's mode, "served" or "exact"); a backend runs its own ops:
its attention_forward / moe_forward where it has them, else its fine ops chained, and mhc_pre/mhc_post
from the backend if it provides them, else the reference's (mHC has no quantized form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4check.attn_weights import load_attention_weights
from fp4check.checkpoint import Checkpoint
from fp4check.kernels.contract import AttentionWeights, MoEWeights
from fp4check.kernels.emulated import attention as emu_attn
from fp4check.kernels.emulated import moe as emu_moe
from fp4check.kernels.registry import provides
from fp4check.moe_weights import load_moe_weights, set_activation_scales
from fp4check.references import attention as ref_attn
from fp4check.references import moe as ref_moe
from fp4check.references.common import rms_norm
from fp4check.references.mhc import hc_head, mhc_post, mhc_pre

ATTENTION_FINE_OPS = ("attn_q", "attn_kv", "kv_cache_write", "kv_cache_read", "paged_attention", "attn_out")


@dataclass
class LayerWeights:
    layer: int
    attn: AttentionWeights
    moe: MoEWeights
    hc: dict  # "attn" | "ffn" -> (fn, base, scale) float32
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    n_hc: int
    sinkhorn_iters: int
    hc_eps: float
    eps: float


def load_layer(ckpt: Checkpoint, layer: int) -> LayerWeights:
    cfg = ckpt.config
    p = f"layers.{layer}."

    def f(name: str) -> torch.Tensor:
        return ckpt.weight(p + name).dequantize()

    return LayerWeights(
        layer=layer,
        attn=load_attention_weights(ckpt, layer),
        moe=load_moe_weights(ckpt, layer),
        hc={b: tuple(f(f"hc_{b}_{x}") for x in ("fn", "base", "scale")) for b in ("attn", "ffn")},
        attn_norm=f("attn_norm"),
        ffn_norm=f("ffn_norm"),
        n_hc=cfg.hc_mult,
        sinkhorn_iters=cfg.hc_sinkhorn_iters,
        hc_eps=cfg.hc_eps,
        eps=cfg.rms_norm_eps,
    )


def embed_streams(ckpt: Checkpoint, token_ids: torch.Tensor) -> torch.Tensor:
    """X0 [T, n_hc, D] bf16: the embeddings copied into every stream."""
    h = ckpt.weight("embed").dequantize()[token_ids].to(torch.bfloat16)
    return h.unsqueeze(1).expand(-1, ckpt.config.hc_mult, -1).contiguous()


def hc_pre_block(ops, streams: torch.Tensor, lw: LayerWeights, block: str) -> dict:
    fn = ops.mhc_pre if ops is not None and provides(ops, "mhc_pre") else mhc_pre
    return fn(streams, *lw.hc[block], lw.n_hc, lw.sinkhorn_iters, lw.hc_eps, lw.eps)


def hc_post_block(ops, streams: torch.Tensor, y: torch.Tensor, pre: dict) -> torch.Tensor:
    fn = ops.mhc_post if ops is not None and provides(ops, "mhc_post") else mhc_post
    return fn(streams, y, pre["post"], pre["comb"])


def norm_bf16(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm(x.float(), weight, eps).to(torch.bfloat16)


def reference_moe(x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor) -> torch.Tensor:
    ids, weights = emu_moe.router(x, w, token_ids)  # routing is float32 math in every backend: one function
    r = ref_moe.Routing(None, None, ids, weights)
    out = ref_moe.moe(x, r, w.extra["experts_float"], w.extra["shared_float"], w.swiglu_limit)["out"]
    return out.to(torch.bfloat16)


def reference_layer(
    streams: torch.Tensor, lw: LayerWeights, token_ids: torch.Tensor, mode: str, attention_only: bool = False
) -> dict:
    """Every stage of one layer: hc.attn_pre, attn (the attention stages dict), attn.out, hc.attn_post,
    hc.ffn_pre, moe_in, moe.out, out (the streams after the layer); up to attn.out if attention_only."""
    s: dict = {}
    pre = hc_pre_block(None, streams, lw, "attn")
    s["hc.attn_pre"] = pre["input"]
    s["attn_in"] = norm_bf16(pre["input"], lw.attn_norm, lw.eps)
    s["attn"] = ref_attn.attention_prefill(s["attn_in"], lw.attn.params, mode)
    s["attn.out"] = s["attn"]["out"]
    if attention_only:
        return s
    s["hc.attn_post"] = mhc_post(streams, s["attn.out"], pre["post"], pre["comb"])
    pre2 = hc_pre_block(None, s["hc.attn_post"], lw, "ffn")
    s["hc.ffn_pre"] = pre2["input"]
    s["moe_in"] = norm_bf16(pre2["input"], lw.ffn_norm, lw.eps)
    s["moe.out"] = reference_moe(s["moe_in"], lw.moe, token_ids)
    s["out"] = mhc_post(s["hc.attn_post"], s["moe.out"], pre2["post"], pre2["comb"])
    return s


def attention_runs(backend) -> bool:
    return provides(backend, "attention_forward") or all(provides(backend, op) for op in ATTENTION_FINE_OPS)


def backend_attention(backend, x: torch.Tensor, w: AttentionWeights, seed: int = 0):
    positions = torch.arange(x.shape[0])
    if provides(backend, "attention_forward"):
        return backend.attention_forward(x, w, positions)
    return emu_attn.attention_forward(x, w, positions, ops=backend, seed=seed)


def backend_moe(backend, x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor) -> torch.Tensor:
    if provides(backend, "moe_forward"):
        return backend.moe_forward(x, w, token_ids, None).out
    ids, weights = backend.router(x, w, token_ids, None)
    plan = emu_moe.plan_routes(ids, weights, w.expert_start, w.n_local)
    st = emu_moe.moe_routed(x, w, plan, ops=backend)
    return (st["combine"] + backend.shared_expert(x, w).float()).to(torch.bfloat16)


def set_layer_scales(lw: LayerWeights, moe_in: torch.Tensor, token_ids: torch.Tensor, mode: str) -> str:
    """The MoE activation scales for this layer (checkpoint, or a warm-up amax on the reference's input)."""
    w = lw.moe
    plan = emu_moe.plan_routes(*emu_moe.router(moe_in, w, token_ids), w.expert_start, w.n_local)
    return set_activation_scales(w, mode, moe_in, plan)


def backend_layer(backend, streams: torch.Tensor, lw: LayerWeights, token_ids: torch.Tensor, seed: int = 0) -> dict:
    """The same stages as reference_layer, each computed by the backend on its own upstream."""
    s: dict = {}
    pre = hc_pre_block(backend, streams, lw, "attn")
    s["hc.attn_pre"] = pre["input"]
    s["attn_in"] = norm_bf16(pre["input"], lw.attn_norm, lw.eps)
    res = backend_attention(backend, s["attn_in"], lw.attn, seed)
    s["attn"] = dict(res.stages)
    s["attn.out"] = res.out
    s["hc.attn_post"] = hc_post_block(backend, streams, res.out, pre)
    pre2 = hc_pre_block(backend, s["hc.attn_post"], lw, "ffn")
    s["hc.ffn_pre"] = pre2["input"]
    s["moe_in"] = norm_bf16(pre2["input"], lw.ffn_norm, lw.eps)
    s["moe.out"] = backend_moe(backend, s["moe_in"], lw.moe, token_ids)
    s["out"] = hc_post_block(backend, s["hc.attn_post"], s["moe.out"], pre2)
    return s


def head_logits(ckpt: Checkpoint, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h bf16 [T, D] after hc_head and the final norm, logits fp32 [T, V])."""
    cfg = ckpt.config
    fn, base, scale = (ckpt.weight(f"hc_head_{x}").dequantize() for x in ("fn", "base", "scale"))
    h = hc_head(streams, fn, base, scale, cfg.hc_eps, cfg.rms_norm_eps)
    h = norm_bf16(h, ckpt.weight("norm").dequantize(), cfg.rms_norm_eps)
    return h, h.float() @ ckpt.weight("head").dequantize().t()
