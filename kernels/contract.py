"""The op contract between fp4check and a backend under test (versioned; see README "Plugin API").

A backend is an object with `name`, `needs` (fp4check.kernels.registry.Needs) and any of the ops below as
methods. fp4check checks what a backend provides and skips the rest with the reason. The harness hands
over CPU tensors today (a GPU backend moves what it needs; a --device option comes with the GPU
backends); the layouts are the Blackwell NVFP4 kernels' own.

Fine ops (the MoE pipeline of a CUTLASS/CuTeDSL NVFP4 runner):

  router(x, w: MoEWeights, token_ids, forced_ids=None) -> (ids [T, k] int64 global, weights [T, k] fp32)
  nvfp4_quantize(x bf16 [P, K], global_scale: EncodeScale) -> NVFP4Activation
      packed e2m1 [P, K/2] uint8 (element 2i in the low nibble), e4m3 block-16 scales in the 128x4
      swizzle of the whole [P, K/16] buffer (P a multiple of 128 where rows are expert-padded).
  grouped_gemm_nvfp4(a: NVFP4Activation, b: GroupedNVFP4, offsets int64 [E+1]) -> bf16 [P, N]
      rows offsets[e]..offsets[e+1] of `a` times expert e's weight; fp32 accumulation; epilogue
      alpha = a.global_scale decode x b.global_scale[e, group] (w1 and w3 halves of w13 may differ).
      `b` is what the backend's prepare_weights returned where it has one, else the checkpoint layout.
  prepare_weights(b: GroupedNVFP4) -> GroupedNVFP4        optional, once per weight before the GEMMs
      a runner's process-weights-after-loading step (move, repack, shuffle), its result tagged with
      the backend's own `layout`; it may reorder b's storage in place (no second copy of the experts),
      so the harness then calls restore_weights(prepared) (optional) before it reads b again.
  swiglu_clamp(gate_up bf16 [P, 2I], limit float | None) -> bf16 [P, I]   silu(min(g, L)) * clamp(u, -L, L)
  swiglu_quantize(gate_up, limit, global_scale: EncodeScale) -> (act bf16 [P, I], NVFP4Activation)
      optional, a fused SwiGLU + L2 requantization: the pipeline calls it in place of swiglu_clamp then
      nvfp4_quantize where a backend has it (its act and quant_l2 stages are compared as those ops' are).
  moe_scatter(rows bf16 [P, D], plan: RoutePlan) -> fp32 [T, D]      sum over slots of weight * rows[row_of]
  shared_expert(x bf16 [T, D], w: MoEWeights) -> bf16 [T, D]

Attention fine ops (one layer; `w` is AttentionWeights, positions int64 [T]):
  attn_q(x bf16 [T, D], w, positions) -> (qr bf16 [T, q_lora], q bf16 [T, H, d] normalized per head, rotated)
  attn_kv(x bf16 [T, D], w, positions) -> kv bf16 [T, d] (kv_norm, rotated; before the FP8 cache)
  compressor(x bf16 [T, D], w) -> entries bf16 [W, d] of the complete windows (C4A/C128A layers)
  indexer(x bf16 [T, D], qr, w, positions) -> (scores fp32 [T, W], topk int64 [T, min(k, W)], -1 = none)
  kv_cache_write(pages uint8 [P, page_bytes], block int, slots int64 [N], kv bf16 [N, d]) -> None, in place
      the 584-byte FP8 record of spec §2.13: per page, `block` records [448 e4m3 | 64 bf16 rope] then a
      [block, 8] area of 7 ue8m0 scale bytes + 1 pad; slot = page * block + offset (KV_LAYOUT in kv_cache).
  kv_cache_read(pages, block, slots int64 [N]) -> bf16 [N, d]
  paged_attention(q bf16 [T, H, d], pages, block, slots int64 [T, K] (-1 skipped), sink fp32 [H]) -> bf16 [T, H, d]
  attn_out(core bf16 [T, H, d], w, positions) -> bf16 [T, D]   inverse RoPE, grouped wo_a, wo_b
  mhc_pre / mhc_post: as fp4check.references.mhc (the residual-stream mixing around each sub-block)
Coarse op (a fused runner as it is):

  moe_forward(x bf16 [T, D], w: MoEWeights, token_ids int64 [T], plan: RoutePlan | None) -> MoEOutput
      `out` [T, D] = routed + shared; `stages` may hold any of the stage tensors named in STAGES, in the
      layouts the stages document, so that fp4check can compare them too.
  attention_forward(x bf16 [T, D], w: AttentionWeights, positions int64 [T]) -> AttentionOutput
      a prefill over the whole sequence; `stages` may hold any of ATTENTION_STAGES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fp4check.references.nvfp4 import DecodeScale, EncodeScale

CONTRACT_VERSION = "1.3"  # 1.2: the optional fused swiglu_quantize; 1.3: prepare/restore_weights
FINE_OPS = ("router", "nvfp4_quantize", "grouped_gemm_nvfp4", "swiglu_clamp", "moe_scatter", "shared_expert")
ATTENTION_OPS = (
    "attn_q",
    "attn_kv",
    "compressor",
    "indexer",
    "kv_cache_write",
    "kv_cache_read",
    "paged_attention",
    "attn_out",
    "mhc_pre",
    "mhc_post",
)
COARSE_OPS = ("moe_forward", "attention_forward")
OPS = FINE_OPS + ATTENTION_OPS + COARSE_OPS

# MoE stages in pipeline order, with the layout each is compared in.
STAGES = {
    "route": "ids [T, k] + weights [T, k]",
    "quant_l1": "NVFP4 activation of x, rows in padded expert order",
    "l1": "bf16 [T, k, 2I] gate|up per slot",
    "act": "bf16 [T, k, I] clamped SwiGLU per slot",
    "quant_l2": "NVFP4 activation of act, rows in padded expert order",
    "l2": "bf16 [T, k, D] expert output per slot (unweighted)",
    "combine": "fp32 [T, D] weighted sum over slots",
    "shared": "bf16 [T, D] shared expert",
    "out": "[T, D] combine + shared",
}


# Attention stages (prefill), with the layout each is compared in.
ATTENTION_STAGES = {
    "q": "bf16 [T, H, d] after the per-head norm and RoPE",
    "kv": "bf16 [T, d] before the FP8 cache",
    "compress": "bf16 [W, d] compressed entries before the FP8 cache",
    "indexer": "int64 [T, k] top-k entries (-1 = none), with fp32 scores [T, W] as index_scores",
    "kv_write": "uint8 [N, 584] the cache record and scale bytes of each written slot",
    "kv_read": "bf16 [N, d] what attention reads back (window kv, then entries)",
    "core": "bf16 [T, H, d] attention output before inverse RoPE",
    "out": "bf16 [T, D] after the output projection",
}


@dataclass
class NVFP4Activation:
    packed: torch.Tensor  # uint8 [P, K/2]
    scales: torch.Tensor  # float8_e4m3fn, flat swizzled 128x4 layout of [P, K/16]
    global_scale: EncodeScale
    rows: int
    cols: int


@dataclass
class GroupedNVFP4:
    """Expert weights [E, N, K] in NVFP4: packed [E, N, K/2], linear scales [E, N, K/16], global decode
    scales [E, G] for G column groups of equal width (G = 2 for w13: the w1 rows then the w3 rows).
    `layout` "rows" is that, row-major as stored; a backend's prepare_weights names its own."""

    packed: torch.Tensor
    scales: torch.Tensor
    global_scale: DecodeScale
    layout: str = "rows"


@dataclass
class RoutePlan:
    """Token -> row mapping of an expert-sorted, 128-padded grouped GEMM.

    ids/weights [T, k] as routed (global ids); local [T, k] local expert id or -1 where the expert is
    not on this rank; counts [E_local]; offsets [E_local + 1] padded row offsets (multiples of 128);
    row_of [T, k] padded row of each slot or -1; token_of [P] source token of each row or -1 (padding);
    P = offsets[-1], or more for a plan sized before routing (static shapes, CUDA graphs).
    """

    ids: torch.Tensor
    weights: torch.Tensor
    local: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    row_of: torch.Tensor
    token_of: torch.Tensor

    @property
    def rows(self) -> int:
        """P, the padded row count: offsets[-1], or more for a plan sized before routing (static shapes)."""
        return self.token_of.shape[0]


@dataclass
class MoEWeights:
    """One layer's MoE weights as a runner receives them (prepared by fp4check from the checkpoint)."""

    layer: int
    gate: torch.Tensor  # [E, D] bf16
    bias: torch.Tensor | None  # [E] fp32 (bias-routed layers)
    tid2eid: torch.Tensor | None  # [V, k] int64 (hash layers)
    w13: GroupedNVFP4  # [E_local, 2I, D]
    w2: GroupedNVFP4  # [E_local, D, I]
    input_scale_l1: DecodeScale  # activation global scale of L1 (scalar)
    input_scale_l2: DecodeScale  # activation global scale of L2 (scalar)
    shared: dict  # {"w1"|"w2"|"w3": fp4check.checkpoint.Weight}
    topk: int
    routed_scaling_factor: float
    swiglu_limit: float | None
    n_experts: int  # global
    expert_start: int = 0  # first global expert id on this rank
    scoring_func: str = "sqrtsoftplus"
    extra: dict = field(default_factory=dict)

    @property
    def n_local(self) -> int:
        return self.w13.packed.shape[0]


@dataclass
class MoEOutput:
    out: torch.Tensor
    stages: dict[str, object] = field(default_factory=dict)


@dataclass
class AttentionWeights:
    """One layer's attention as a runner receives it: the projections as stored in the checkpoint
    (fp4check.checkpoint.Weight: FP8 block, NVFP4 or BF16) and the float32 view of everything
    (fp4check.references.attention.AttentionParams: norms, sink, compressor and indexer, shapes, RoPE)."""

    layer: int
    layer_type: str
    linears: dict  # "wq_a", "wq_b", "wkv", "wo_a", "wo_b", "indexer.wq_b" -> Weight
    params: object  # AttentionParams
    extra: dict = field(default_factory=dict)  # "compress_freqs": the compressed layers' RoPE frequencies


@dataclass
class AttentionOutput:
    out: torch.Tensor
    stages: dict[str, object] = field(default_factory=dict)
