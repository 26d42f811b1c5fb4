"""Grouped NVFP4 GEMM in Triton for GPUs without FP4 tensor cores (SM90; it runs on SM100 too): rows
sorted by expert and padded to 128 (offsets), e2m1 decoded in the kernel and multiplied by its e4m3
block scale into bf16 (exact: at most 5 significant bits), bf16 tensor-core MMA with fp32 accumulation,
and alpha = S_dec(a) * S_dec(b)[expert, column group] in the epilogue (w1 and w3 halves of w13 may carry
different global scales). Equal to the emulated backend up to fp32 accumulation order.

A is decoded once to bf16 by a first kernel (its swizzled scales read in the 128x4 layout); B is decoded
in the GEMM's load path (bf16 bits assembled with integer ops, then its block scale), its scales read in
the checkpoint's linear [E, N, K/16] layout. Each
128-row tile belongs to one expert; the tile -> expert map is computed on the GPU (searchsorted), and
tiles past offsets[-1] (a plan sized before routing) skip their K loop, so the launch needs no host sync
and can be captured in a CUDA graph. Tile width, warps and stages are autotuned per (N, K). (Decoding
the two nibbles of a byte as separate tiles against a nibble-split A, with the block scale applied in
bf16, measured 9% slower on the H200: the join stays.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _e2m1(code):
    """bf16 value of e2m1 codes (int32 0..15), built from bits with integer ops (no exp2 on the SFU):
    0.5 is 0x3F00; magnitude codes 2..7 are 2^(e-1) * (1 + m/2), e = mag >> 1, m = mag & 1."""
    mag = code & 7
    normal = (((mag >> 1) + 126) << 7) | ((mag & 1) << 6)
    bits = tl.where(mag < 2, mag * 0x3F00, normal) | ((code & 8) << 12)
    return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _unpack(packed):
    """uint8 [R, C] -> int32 codes [R, 2C] (low nibble first)."""
    p = packed.to(tl.int32)
    return tl.reshape(tl.join(p & 15, p >> 4), (packed.shape[0], packed.shape[1] * 2))


@triton.jit
def _dequant_a_kernel(a_ptr, as_ptr, out_ptr, rows, K, col_tiles, BM: tl.constexpr, BK: tl.constexpr):
    """A once to bf16 (e2m1 x block scale, no global): every N tile of the GEMM reads it, none decodes it."""
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    k0 = tl.program_id(1) * BK
    a_p = tl.load(a_ptr + r[:, None].to(tl.int64) * (K // 2) + (k0 // 2 + tl.arange(0, BK // 2))[None, :])
    sc = k0 // 16 + tl.arange(0, BK // 16)
    off = ((r[:, None] // 128) * col_tiles + sc[None, :] // 4) * 512
    off += (r[:, None] % 32) * 16 + ((r[:, None] % 128) // 32) * 4 + sc[None, :] % 4
    a_s = tl.load(as_ptr + off).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    v = tl.reshape(_e2m1(_unpack(a_p)).to(tl.float32), (BM, BK // 16, 16)) * a_s[:, :, None]
    out = tl.reshape(v, (BM, BK)).to(tl.bfloat16)
    tl.store(out_ptr + r[:, None].to(tl.int64) * K + (k0 + tl.arange(0, BK))[None, :], out)


@triton.autotune(
    configs=[
        triton.Config({"BN": 128}, num_warps=8, num_stages=3),
        triton.Config({"BN": 128}, num_warps=8, num_stages=4),
        triton.Config({"BN": 256}, num_warps=8, num_stages=3),
        triton.Config({"BN": 64}, num_warps=4, num_stages=4),
    ],
    key=["N", "K"],
)
@triton.jit
def _gemm_kernel(
    a16_ptr,
    b_ptr,
    bs_ptr,
    bg_ptr,
    ag_ptr,
    tile_expert_ptr,
    offsets_ptr,
    n_experts,
    out_ptr,
    N,
    K,
    groups,
    n_per_group,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    # tiles past the last expert's rows (a plan sized before routing) skip the K loop and write zeros
    k_end = tl.where(pid_m * BM < tl.load(offsets_ptr + n_experts), K, 0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    kb = tl.arange(0, BK // 2)
    ks = tl.arange(0, BK // 16)
    b_base = b_ptr + e.to(tl.int64) * N * (K // 2)
    bs_base = bs_ptr + e.to(tl.int64) * N * (K // 16)
    cmask = cols[:, None] < N
    for k0 in range(0, k_end, BK):
        a_v = tl.load(a16_ptr + rows[:, None].to(tl.int64) * K + (k0 + tl.arange(0, BK))[None, :])
        b_p = tl.load(b_base + cols[:, None].to(tl.int64) * (K // 2) + (k0 // 2 + kb)[None, :], mask=cmask, other=0)
        b_c = _e2m1(_unpack(b_p))
        b_s = (
            tl.load(bs_base + cols[:, None].to(tl.int64) * (K // 16) + (k0 // 16 + ks)[None, :], mask=cmask, other=0)
            .to(tl.float8e4nv, bitcast=True)
            .to(tl.float32)
        )
        b_v = tl.reshape(b_c.to(tl.float32), (BN, BK // 16, 16)) * b_s[:, :, None]
        b_v = tl.reshape(b_v, (BN, BK)).to(tl.bfloat16)
        acc = tl.dot(a_v, tl.trans(b_v), acc)
    group = cols // n_per_group
    alpha = tl.load(ag_ptr) * tl.load(bg_ptr + e * groups + group, mask=cols < N, other=0.0)
    out = (acc * alpha[None, :]).to(tl.bfloat16)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], out, mask=cols[None, :] < N)


def tile_experts(offsets: torch.Tensor, rows: int, bm: int = 128) -> torch.Tensor:
    """int32 [rows / bm]: the expert of each row tile (offsets are multiples of bm), on the GPU."""
    starts = torch.arange(0, rows, bm, device=offsets.device)
    e = torch.searchsorted(offsets[1:].contiguous(), starts, right=True)
    return e.clamp(max=offsets.numel() - 2).to(torch.int32)


def grouped_gemm(
    a_packed: torch.Tensor,
    a_scales: torch.Tensor,
    a_global_decode: torch.Tensor,
    b_packed: torch.Tensor,
    b_scales: torch.Tensor,
    b_global_decode: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """bf16 [P, N]. a_packed uint8 [P, K/2], a_scales uint8 swizzled, b_packed uint8 [E, N, K/2], b_scales
    uint8 [E, N, K/16], b_global_decode fp32 [E, G], offsets int64 [E+1] (multiples of 128, offsets[-1] = P).
    Rows past offsets[-1] are not written."""
    rows, half_k = a_packed.shape
    k = half_k * 2
    e, n, _ = b_packed.shape
    bm, bk = 128, 64
    if k % 128 or rows % bm:
        raise ValueError(f"the Triton grouped GEMM takes K a multiple of 128 and rows of 128, got {rows}x{k}")
    groups = b_global_decode.shape[-1] if b_global_decode.dim() > 1 else 1
    out = torch.empty(rows, n, dtype=torch.bfloat16, device=a_packed.device)
    te = tile_experts(offsets, rows, bm)
    cp = -(-(k // 16) // 4) * 4
    a16 = torch.empty(rows, k, dtype=torch.bfloat16, device=a_packed.device)
    _dequant_a_kernel[(rows // 64, k // 128)](a_packed, a_scales, a16, rows, k, cp // 4, BM=64, BK=128)
    _gemm_kernel[lambda meta: (rows // bm, triton.cdiv(n, meta["BN"]))](
        a16,
        b_packed.contiguous(),
        b_scales.contiguous(),
        b_global_decode.reshape(e, groups).to(torch.float32).contiguous(),
        a_global_decode.reshape(1).to(torch.float32),
        te,
        offsets,
        offsets.numel() - 1,
        out,
        n,
        k,
        groups,
        n // groups,
        BM=bm,
        BK=bk,
    )
    return out
