"""What a Blackwell NVFP4 MoE runner computes, in its own data layouts, in plain device-agnostic torch
(its codecs are checked byte for byte on CUDA; the harness runs it on the CPU today).

route -> plan (rows sorted by expert, each expert padded to a multiple of 128 rows: no token is ever
dropped or clamped, seeds bugs 14 and 22) -> NVFP4 quantization of x with the L1 activation global scale
(scales in the 128x4 swizzle of the whole padded buffer, bug 24) -> L1 grouped GEMM on the packed
operands (e2m1 x e4m3 products accumulated in fp32, epilogue alpha = S_dec(act) x S_dec(w) per expert
and per w1/w3 half, output bf16) -> clamped SwiGLU (bug 25) -> requantization with the separate L2
global scale (bugs 6-7) -> L2 grouped GEMM -> scatter-add with the routing weights in fp32.
Expert parallelism keeps local experts [start, start + E_local) and maps global ids to local ones
(bug 8); slots routed elsewhere are masked.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, MoEOutput, MoEWeights, NVFP4Activation, RoutePlan
from fp4check.references.common import clamped_swiglu
from fp4check.references.e2m1 import e2m1_decode, unpack_e2m1
from fp4check.references.fp8 import e4m3_decode
from fp4check.references.moe import route
from fp4check.references.nvfp4 import NVFP4_BLOCK, EncodeScale
from fp4check.references.nvfp4 import nvfp4_quantize as quantize_nvfp4
from fp4check.references.swizzle import swizzle_128x4, unswizzle_128x4

ROW_ALIGN = 128


def static_rows(tokens: int, topk: int, n_local: int) -> int:
    """The most padded rows a plan of `tokens` x `topk` slots over n_local experts can need: every slot,
    plus up to 127 padding rows for each expert that gets any, rounded to 128."""
    rows = tokens * topk + min(n_local, tokens * topk) * (ROW_ALIGN - 1)
    return -(-rows // ROW_ALIGN) * ROW_ALIGN


def plan_routes(
    ids: torch.Tensor, weights: torch.Tensor, expert_start: int, n_local: int, max_rows: int | None = None
) -> RoutePlan:
    """Expert-sorted, 128-padded row plan for the slots whose expert lives on this rank.

    With max_rows (static_rows of the batch) every buffer has a size known before routing and nothing
    waits on the GPU: the plan a CUDA graph can capture; rows past offsets[-1] are padding. Without it
    the plan is exactly offsets[-1] rows (one host sync to size token_of)."""
    t, k = ids.shape
    dev = ids.device
    local = ids - expert_start
    valid = (local >= 0) & (local < n_local)
    local = torch.where(valid, local, torch.full_like(local, -1))
    flat = local.flatten()
    # counts with a fixed size (bincount's size depends on the data: a host sync on the GPU)
    counts = torch.zeros(n_local, dtype=torch.int64, device=dev).scatter_add_(
        0, flat.clamp(min=0), valid.flatten().long()
    )
    padded = (counts + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), padded.cumsum(0)])
    # stable sort by expert keeps token order inside each expert; masked slots sort last
    key = torch.where(flat >= 0, flat, torch.full_like(flat, n_local))
    order = torch.sort(key, stable=True).indices
    sorted_e = key[order]
    first_of_expert = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), counts.cumsum(0)])
    live = sorted_e < n_local
    e = sorted_e.clamp(max=n_local - 1)
    rows = torch.where(live, offsets[e] + torch.arange(t * k, device=dev) - first_of_expert[e], -1)
    row_of = torch.empty(t * k, dtype=torch.int64, device=dev).scatter_(0, order, rows)
    n_rows = int(offsets[-1]) if max_rows is None else max_rows
    # one spare slot takes the writes of masked slots, then is cut off
    token_of = torch.full((n_rows + 1,), -1, dtype=torch.int64, device=dev)
    token_of.scatter_(0, torch.where(live, rows, n_rows), torch.where(live, order // k, -1))
    return RoutePlan(ids, weights, local, counts, offsets, row_of.view(t, k), token_of[:n_rows])


def gather_rows(x: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """The padded [P, D] input of the grouped GEMM: row r holds x[token_of[r]], padding rows are 0."""
    live = (plan.token_of >= 0).unsqueeze(1)
    return torch.where(live, x[plan.token_of.clamp(min=0)], torch.zeros((), dtype=x.dtype, device=x.device))


def per_slot(rows: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """[P, N] padded rows -> [T, k, N] per routing slot (masked slots are 0)."""
    zero = torch.zeros((), dtype=rows.dtype, device=rows.device)
    if rows.shape[0] == 0:  # no slot on this rank
        return zero.expand(*plan.row_of.shape, rows.shape[-1]).clone()
    live = (plan.row_of >= 0).unsqueeze(-1)
    return torch.where(live, rows[plan.row_of.clamp(min=0)], zero)


def quantize_activation(x: torch.Tensor, global_scale: EncodeScale) -> NVFP4Activation:
    q = quantize_nvfp4(x, global_scale)
    return NVFP4Activation(q.packed, swizzle_128x4(q.scales), global_scale, x.shape[0], x.shape[1])


def dequantize_activation(a: NVFP4Activation, with_global: bool = True) -> torch.Tensor:
    """float32 [P, K]: e2m1 x e4m3 (x S_dec if with_global), reading the swizzled scales."""
    scales = e4m3_decode(unswizzle_128x4(a.scales, a.rows, a.cols // NVFP4_BLOCK))
    values = e2m1_decode(unpack_e2m1(a.packed)).view(a.rows, -1, NVFP4_BLOCK) * scales.unsqueeze(-1)
    values = values.view(a.rows, a.cols)
    return values * a.global_scale.to_decode().value if with_global else values


def _weight_values(b: GroupedNVFP4, e: int) -> torch.Tensor:
    """float32 [N, K] e2m1 x e4m3 of expert e, without the global scale (exact)."""
    n = b.packed.shape[1]
    vals = e2m1_decode(unpack_e2m1(b.packed[e])).view(n, -1, NVFP4_BLOCK) * e4m3_decode(b.scales[e]).unsqueeze(-1)
    return vals.view(n, -1)


def grouped_gemm_nvfp4(a: NVFP4Activation, b: GroupedNVFP4, offsets: torch.Tensor) -> torch.Tensor:
    """bf16 [P, N]: rows of expert e times expert e's weight, fp32 accumulation, alpha in the epilogue."""
    # A decoded one expert's rows at a time: at the Pro shapes all of A in float32 is 1.4 GB
    a_scales = e4m3_decode(unswizzle_128x4(a.scales, a.rows, a.cols // NVFP4_BLOCK))
    a_dec = a.global_scale.to_decode().value
    n = b.packed.shape[1]
    groups = b.global_scale.value.shape[-1] if b.global_scale.value.dim() > 1 else 1
    out = torch.zeros(a.rows, n, dtype=torch.bfloat16, device=a.packed.device)
    bounds = offsets.tolist()
    for e in range(len(bounds) - 1):
        lo, hi = bounds[e], bounds[e + 1]
        if hi == lo:
            continue
        a_vals = e2m1_decode(unpack_e2m1(a.packed[lo:hi])).view(hi - lo, -1, NVFP4_BLOCK) * a_scales[lo:hi].unsqueeze(
            -1
        )
        acc = a_vals.view(hi - lo, a.cols) @ _weight_values(b, e).t()  # fp32 accumulation
        alpha = (a_dec * b.global_scale.value[e]).to(torch.float32).reshape(1, groups, 1)
        out[lo:hi] = (acc.view(hi - lo, groups, n // groups) * alpha).view(hi - lo, n).to(torch.bfloat16)
    return out


def swiglu_clamp(gate_up: torch.Tensor, limit: float | None) -> torch.Tensor:
    i = gate_up.shape[-1] // 2
    return clamped_swiglu(gate_up[..., :i], gate_up[..., i:], limit).to(torch.bfloat16)


def moe_scatter(rows: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """fp32 [T, D] = sum over the slots on this rank of weight x rows[row_of]."""
    slots = per_slot(rows, plan).to(torch.float32)
    w = torch.where(plan.row_of >= 0, plan.weights, torch.zeros_like(plan.weights))
    return (slots * w.unsqueeze(-1)).sum(1)


def router(x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, forced_ids: torch.Tensor | None = None):
    r = route(
        x,
        w.gate,
        w.topk,
        w.routed_scaling_factor,
        bias=w.bias,
        tid2eid=w.tid2eid,
        token_ids=token_ids,
        scoring_func=w.scoring_func,
        forced_ids=forced_ids,
    )
    return r.ids, r.weights


def moe_routed(x: torch.Tensor, w: MoEWeights, plan: RoutePlan, ops=None) -> dict[str, object]:
    """The routed half, stage by stage, through `ops` (an object with the fine ops; default: this module)."""
    import sys

    ops = ops or sys.modules[__name__]
    a1 = ops.nvfp4_quantize(gather_rows(x, plan), w.input_scale_l1.to_encode())
    l1 = ops.grouped_gemm_nvfp4(a1, w.w13, plan.offsets)
    if hasattr(ops, "swiglu_quantize"):  # a fused SwiGLU + L2 requantization kernel
        act, a2 = ops.swiglu_quantize(l1, w.swiglu_limit, w.input_scale_l2.to_encode())
    else:
        act = ops.swiglu_clamp(l1, w.swiglu_limit)
        a2 = ops.nvfp4_quantize(act, w.input_scale_l2.to_encode())
    l2 = ops.grouped_gemm_nvfp4(a2, w.w2, plan.offsets)
    combine = ops.moe_scatter(l2, plan)
    return {"quant_l1": a1, "l1": l1, "act": act, "quant_l2": a2, "l2": l2, "combine": combine}


nvfp4_quantize = quantize_activation  # the contract's op name, so this module serves as `ops`


def moe_forward(
    x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, plan: RoutePlan | None = None, ops=None
) -> MoEOutput:
    """The whole block through `ops` (an object with router, plan_routes, the fine ops and shared_expert;
    default: this module's)."""
    import sys

    from fp4check.kernels.emulated.shared import shared_expert

    ops = ops or sys.modules[__name__]
    if plan is None:
        ids, weights = ops.router(x, w, token_ids)
        plan = ops.plan_routes(ids, weights, w.expert_start, w.n_local)
    stages = moe_routed(x, w, plan, ops=ops)
    for name in ("l1", "act", "l2"):  # the contract compares these per routing slot
        stages[name] = per_slot(stages[name], plan)
    sh = getattr(ops, "shared_expert", shared_expert)(x, w)
    stages["route"] = (plan.ids, plan.weights)
    stages["shared"] = sh
    stages["plan"] = plan
    out = (stages["combine"] + sh.to(torch.float32)).to(torch.bfloat16)
    stages["out"] = out
    return MoEOutput(out, stages)
