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
  swiglu_clamp(gate_up bf16 [P, 2I], limit float | None) -> bf16 [P, I]   silu(min(g, L)) * clamp(u, -L, L)
  moe_scatter(rows bf16 [P, D], plan: RoutePlan) -> fp32 [T, D]      sum over slots of weight * rows[row_of]
  shared_expert(x bf16 [T, D], w: MoEWeights) -> bf16 [T, D]

Coarse op (a fused runner as it is):

  moe_forward(x bf16 [T, D], w: MoEWeights, token_ids int64 [T], plan: RoutePlan | None) -> MoEOutput
      `out` [T, D] = routed + shared; `stages` may hold any of the stage tensors named in STAGES, in the
      layouts the stages document, so that fp4check can compare them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fp4check.references.nvfp4 import DecodeScale, EncodeScale

CONTRACT_VERSION = "1.0"
FINE_OPS = ("router", "nvfp4_quantize", "grouped_gemm_nvfp4", "swiglu_clamp", "moe_scatter", "shared_expert")
COARSE_OPS = ("moe_forward",)
OPS = FINE_OPS + COARSE_OPS

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
    scales [E, G] for G column groups of equal width (G = 2 for w13: the w1 rows then the w3 rows)."""

    packed: torch.Tensor
    scales: torch.Tensor
    global_scale: DecodeScale


@dataclass
class RoutePlan:
    """Token -> row mapping of an expert-sorted, 128-padded grouped GEMM.

    ids/weights [T, k] as routed (global ids); local [T, k] local expert id or -1 where the expert is
    not on this rank; counts [E_local]; offsets [E_local + 1] padded row offsets (multiples of 128);
    row_of [T, k] padded row of each slot or -1; token_of [P] source token of each row or -1 (padding).
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
        return int(self.offsets[-1])


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
