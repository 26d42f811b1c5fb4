"""NVFP4 activation quantization in Triton: bf16 [P, K] and an encode global scale in; packed e2m1
[P, K/2] (element 2i in the low nibble) and e4m3 block-16 scales written straight into the 128x4 swizzle.

Code for code the exact codec (references/nvfp4.py, EncodeScale convention):
- block scale s_b = e4m3(clamp(fp32(amax_b / 6) * S_enc, 448)), the division IEEE-rounded (div_rn;
  Triton's default fp32 `/` is approximate); amax an integer max over the magnitudes' float bits, and
  a block holding NaN/Inf gets 0x7F;
- code = RNE(|x| S_enc / s_b), decided with one exact test per element (`e2m1_codes`, about 12
  instructions); blocks whose scale is 0 store code 0; the sign from the sign bit (-0.0 keeps code 8).
The tile shape is autotuned per K (the row count changes with every batch and is not a key). Looping
each program over several row tiles (software-pipelined loads) measured no faster: the kernel is
instruction-bound, not waiting on memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TWO_POW_M126 = tl.constexpr(2.0**-126)  # moves q < 1 into the fp32 subnormals, where the step is e2m1's 0.5


@triton.jit
def e2m1_codes(ax, gs, g_k, s_k, lim):
    """e2m1 magnitude codes (int32 0..lim) of RNE(ax * g / s), exactly, ties to the even code.

    ax fp32 >= 0; gs ~ g / s (any rounding); g_k = g 2^-k and s_k = s 2^(126-k), both exact
    (`decision_scales`); lim 7, or 0 for a block that stores zeros.
    An approximate quotient q = ax gs only picks the grid interval [v_c, v_c+1) holding it (any error
    well under a quarter interval does); the one midpoint m of that interval then decides, exactly.
    - Interval: with q scaled by 2^-126, the e2m1 grid is every fp32 value with one mantissa bit (q >= 1)
      plus the subnormals' 0.5 steps (q < 1), so the code is the float's bits >> 22, with no branch.
    - Midpoint: the bits (c << 22) + 2^21 are m 2^-126, and m 2^-126 * s_k = m s 2^-k is exact (at most
      3 + 4 significant bits, a normal float), so fma(ax, g_k, -m s 2^-k) rounds the exact
      (ax g - m s) 2^-k once: its sign and zero are those of the exact difference. If q lands in a
      neighbouring interval, the exact value sits on q's side of that interval's midpoint, and the test
      gives the same code.
    - Round up where d > 0, or d == 0 (a tie) and the lower code c is odd. An exact zero from fma is +0,
      so on d's int32 bits that is bits + (c & 1) - 1 >= 0; c & 1 is bit 22 of q's bits, and adding it
      unshifted (2^22) keeps every negative d negative.
    Seven threshold tests (the exact codec's way) cost three times the instructions.
    """
    u = ((ax * gs) * TWO_POW_M126).to(tl.int32, bitcast=True)
    code = u >> 22
    mid = ((code << 22) + 0x200000).to(tl.float32, bitcast=True)
    d = tl.math.fma(ax, g_k, -(mid * s_k))
    x = d.to(tl.int32, bitcast=True) + (u & 0x400000) - 1
    return tl.minimum(code + 1 + (x >> 31), lim)


@triton.jit
def decision_scales(g, s):
    """(g 2^-k, s 2^(126-k)) for `e2m1_codes`, both exact: k = 7 unless g < 2^-120, then lower. A smaller
    g bounds s (s <= amax g / 6 with amax < 2^128), so s 2^(126-k) stays finite, and g 2^-k stays normal."""
    k = tl.minimum(tl.maximum(((g.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 1, 0), 7)
    return g * ((127 - k) << 23).to(tl.float32, bitcast=True), s * ((253 - k) << 23).to(tl.float32, bitcast=True)


@triton.jit
def quantize_tile(w, g, BM: tl.constexpr, BK: tl.constexpr):
    """bf16 pairs as int32 words [BM, BK/2] (element 2i in the low half) -> (packed uint8 [BM, BK/2], e4m3
    scale bytes uint8 [BM, BK/16]). Working on the words, the two elements of a byte stay apart as the
    low-nibble and high-nibble planes: no interleave to undo before packing."""
    ax_lo = ((w & 0x7FFF) << 16).to(tl.float32, bitcast=True)
    ax_hi = (w & 0x7FFF0000).to(tl.float32, bitcast=True)
    # amax over each 16-element block (8 words) on the float bits: non-negative floats order as integers,
    # and a NaN or Inf in the block leaves bits >= 0x7F800000
    mag = tl.maximum(ax_lo.to(tl.int32, bitcast=True), ax_hi.to(tl.int32, bitcast=True))
    amax_bits = tl.max(tl.reshape(mag, (BM, BK // 16, 8)), axis=2)
    bad = amax_bits >= 0x7F800000
    sb = tl.minimum(tl.math.div_rn(amax_bits.to(tl.float32, bitcast=True), 6.0) * g, 448.0)
    s8 = sb.to(tl.float8e4nv, fp_downcast_rounding="rtne")
    s_bytes = tl.where(bad, 0x7F, s8.to(tl.uint8, bitcast=True))
    s_val = s8.to(tl.float32)
    usable = (s_val > 0) & (~bad)
    s_blk = tl.where(usable, s_val, 1.0)
    g_k, s_k = decision_scales(g, s_blk)
    s_w, gs_w = _per_word(s_k, BM, BK), _per_word(g / s_blk, BM, BK)
    lim = _per_word(tl.where(usable, 7, 0), BM, BK)  # blocks that store zeros: codes clamp to 0
    lo = e2m1_codes(ax_lo, gs_w, g_k, s_w, lim)
    hi = e2m1_codes(ax_hi, gs_w, g_k, s_w, lim)
    # the sign bits (bf16 bits 15 and 31) go to bits 3 and 19, 19 to the byte's bit 7 by the second shift;
    # what lands above bit 7 is cut by the uint8 cast; unusable blocks keep no sign (-0.0 of a usable
    # block keeps code 8)
    sg = (w >> 12) & _per_word(tl.where(usable, 0x80008, 0), BM, BK)
    return (lo + (hi << 4) | sg | (sg >> 12)).to(tl.uint8), s_bytes


@triton.jit
def _per_word(v, BM: tl.constexpr, BK: tl.constexpr):
    """Per-block values [BM, BK/16] -> one per word [BM, BK/2] (8 words to a block)."""
    return tl.reshape(tl.broadcast_to(v[:, :, None], (BM, BK // 16, 8)), (BM, BK // 2))


@triton.jit
def swizzled_offsets(r, sc, col_tiles):
    """Byte offsets of scale (row r, column sc) in the 128x4 swizzle:
    ((r // 128) * col_tiles + sc // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + sc % 4."""
    off = ((r[:, None] // 128) * col_tiles + sc[None, :] // 4) * 512
    return off + (r[:, None] % 32) * 16 + ((r[:, None] % 128) // 32) * 4 + sc[None, :] % 4


@triton.autotune(
    configs=[
        triton.Config({"BM": 32, "BK": 128}, num_warps=4),
        triton.Config({"BM": 16, "BK": 256}, num_warps=4),
        triton.Config({"BM": 32, "BK": 256}, num_warps=8),
        triton.Config({"BM": 64, "BK": 256}, num_warps=8),
    ],
    key=["cols"],
)
@triton.heuristics({"EVEN": lambda a: a["rows"] % a["BM"] == 0 and a["cols"] % a["BK"] == 0})
@triton.jit
def _quant_kernel(
    x_ptr, packed_ptr, scale_ptr, g_ptr, rows, cols, col_tiles, BM: tl.constexpr, BK: tl.constexpr, EVEN: tl.constexpr
):
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    pc = tl.program_id(1) * (BK // 2) + tl.arange(0, BK // 2)  # word = packed byte column
    sc = tl.program_id(1) * (BK // 16) + tl.arange(0, BK // 16)
    g = tl.load(g_ptr)
    words = r[:, None].to(tl.int64) * (cols // 2) + pc[None, :]
    if EVEN:  # no masks: the tile grid covers the tensor exactly
        byte, s_bytes = quantize_tile(tl.load(x_ptr + words), g, BM, BK)
        tl.store(packed_ptr + words, byte)
        tl.store(scale_ptr + swizzled_offsets(r, sc, col_tiles), s_bytes)
    else:
        pmask = (r[:, None] < rows) & (pc[None, :] < cols // 2)
        byte, s_bytes = quantize_tile(tl.load(x_ptr + words, mask=pmask, other=0), g, BM, BK)
        tl.store(packed_ptr + words, byte, mask=pmask)
        smask = (r[:, None] < rows) & (sc[None, :] < cols // 16)
        tl.store(scale_ptr + swizzled_offsets(r, sc, col_tiles), s_bytes, mask=smask)


def scale_buffer(rows: int, cols: int, device) -> tuple[torch.Tensor, int]:
    """The zeroed swizzled scale buffer for [rows, cols] and its count of 4-column tiles."""
    rp, cp = -(-rows // 128) * 128, -(-(cols // 16) // 4) * 4
    return torch.zeros(rp * cp, dtype=torch.uint8, device=device), cp // 4


def nvfp4_quantize(x: torch.Tensor, global_encode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x bf16 [P, K] on the GPU, global_encode fp32 scalar tensor -> (packed uint8 [P, K/2], swizzled e4m3
    scales uint8 [Pp * Kp/16]) with the swizzle's padding zero."""
    rows, cols = x.shape
    if cols % 16:
        raise ValueError(f"NVFP4 takes K a multiple of 16, got {cols}")
    x = x.contiguous()
    words = x.view(torch.int32)  # bf16 pairs
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8, device=x.device)
    scales, col_tiles = scale_buffer(rows, cols, x.device)
    g = global_encode.to(device=x.device, dtype=torch.float32).reshape(1)
    grid = lambda meta: (triton.cdiv(rows, meta["BM"]), triton.cdiv(cols, meta["BK"]))  # noqa: E731
    _quant_kernel[grid](words, packed, scales, g, rows, cols, col_tiles)
    return packed, scales
