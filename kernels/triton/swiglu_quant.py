"""Clamped SwiGLU fused with the L2 activation's NVFP4 quantization, in Triton: L1's output bf16 [P, 2I]
in; act = bf16(silu(min(g, L)) * clamp(u, -L, L)) [P, I] out, and (given a global scale) its packed e2m1 and
swizzled e4m3 scales under the L2 input scale, without act making a round trip through memory.

act follows references.common.clamped_swiglu in float32 (silu as x / (1 + exp(-x)) with an IEEE
division, the product rounded once to bf16), as torch computes it; Triton's exp is the fast ex2-based
one (a few float32 ulps from expf), so act may differ from torch's by one bf16 ulp where the float32
product sits next to a bf16 rounding boundary: the GPU test bounds that at one ulp and a small share.
The quantization of act is the quantizer's own tile code (`nvfp4_quant.quantize_tile`): code for code
the exact codec on the act this kernel wrote.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4check.kernels.triton.nvfp4_quant import quantize_tile, scale_buffer, swizzled_offsets


@triton.jit
def _swiglu(gate, up, limit, HAS_LIMIT: tl.constexpr):
    """bf16 bits of silu(min(g, L)) * clamp(u, -L, L) (fp32 in, int32 out in the low 16 bits)."""
    if HAS_LIMIT:
        # PTX min/max return the other operand for NaN: propagate it, as torch's clamp does
        gate = tl.minimum(gate, limit, propagate_nan=tl.PropagateNan.ALL)
        up = tl.maximum(up, -limit, propagate_nan=tl.PropagateNan.ALL)
        up = tl.minimum(up, limit, propagate_nan=tl.PropagateNan.ALL)
    silu = tl.math.div_rn(gate, 1.0 + tl.exp(-gate))
    return (silu * up).to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.autotune(
    configs=[
        triton.Config({"BM": 32, "BK": 128}, num_warps=4),
        triton.Config({"BM": 16, "BK": 256}, num_warps=4),
        triton.Config({"BM": 32, "BK": 256}, num_warps=8),
    ],
    key=["inter", "QUANT"],
)
@triton.jit
def _swiglu_kernel(
    gu_ptr, act_ptr, packed_ptr, scale_ptr, g_ptr, rows, inter, col_tiles, limit,
    HAS_LIMIT: tl.constexpr, QUANT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # bf16 pairs as int32 words: element 2i in the low half (the quantizer's planes, no interleave)
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    c = tl.program_id(1) * (BK // 2) + tl.arange(0, BK // 2)
    mask = (r[:, None] < rows) & (c[None, :] < inter // 2)
    row = gu_ptr + r[:, None].to(tl.int64) * inter  # a row of [P, 2I] bf16 is I words
    gw = tl.load(row + c[None, :], mask=mask, other=0)
    uw = tl.load(row + inter // 2 + c[None, :], mask=mask, other=0)
    lo = _swiglu((gw << 16).to(tl.float32, bitcast=True), (uw << 16).to(tl.float32, bitcast=True), limit, HAS_LIMIT)
    hi = _swiglu(
        (gw & -65536).to(tl.float32, bitcast=True), (uw & -65536).to(tl.float32, bitcast=True), limit, HAS_LIMIT
    )
    w = lo | (hi << 16)
    tl.store(act_ptr + r[:, None].to(tl.int64) * (inter // 2) + c[None, :], w, mask=mask)
    if QUANT:
        byte, s_bytes = quantize_tile(w, tl.load(g_ptr), BM, BK)
        tl.store(packed_ptr + r[:, None].to(tl.int64) * (inter // 2) + c[None, :], byte, mask=mask)
        sc = tl.program_id(1) * (BK // 16) + tl.arange(0, BK // 16)
        smask = (r[:, None] < rows) & (sc[None, :] < inter // 16)
        tl.store(scale_ptr + swizzled_offsets(r, sc, col_tiles), s_bytes, mask=smask)


def swiglu_quantize(
    gate_up: torch.Tensor, limit: float | None, global_encode: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """gate_up bf16 [P, 2I] on the GPU -> (act bf16 [P, I], packed uint8 [P, I/2], swizzled scales); without
    a global scale only act is computed (the packed and scale entries are None)."""
    rows, two_i = gate_up.shape
    inter = two_i // 2
    if two_i % 2 or inter % 16:
        raise ValueError(f"SwiGLU + NVFP4 takes [P, 2I] with I a multiple of 16, got {tuple(gate_up.shape)}")
    gate_up = gate_up.contiguous()
    act = torch.empty(rows, inter, dtype=torch.bfloat16, device=gate_up.device)
    quant = global_encode is not None
    if quant:
        packed = torch.empty(rows, inter // 2, dtype=torch.uint8, device=gate_up.device)
        scales, col_tiles = scale_buffer(rows, inter, gate_up.device)
        g = global_encode.to(device=gate_up.device, dtype=torch.float32).reshape(1)
    else:
        packed, scales, col_tiles, g = act, act, 1, act  # unused pointers
    grid = lambda meta: (triton.cdiv(rows, meta["BM"]), triton.cdiv(inter, meta["BK"]))  # noqa: E731
    lim = float("inf") if limit is None else float(limit)
    _swiglu_kernel[grid](
        gate_up.view(torch.int32),
        act.view(torch.int32),
        packed,
        scales,
        g,
        rows,
        inter,
        col_tiles,
        lim,
        HAS_LIMIT=limit is not None,
        QUANT=quant,
    )
    return (act, packed, scales) if quant else (act, None, None)
