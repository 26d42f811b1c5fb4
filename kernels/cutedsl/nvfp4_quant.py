"""NVFP4 activation quantization in the CUTLASS Python DSL: bf16 [P, K] and an encode global scale in;
packed e2m1 [P, K/2] (element 2i in the low nibble) and e4m3 block-16 scales written straight into the
128x4 swizzle. Code for code the exact codec (references/nvfp4.py), the same decision as the Triton
kernel (kernels/triton/nvfp4_quant.py):

- block scale s_b = e4m3(min(fp32(amax_b / 6) * S_enc, 448)), amax over the finite values, every op
  IEEE-rounded (div.rn, mul.rn in PTX); a block holding NaN/Inf stores 0x7F and codes 0;
- SM90 (`hw_e2m1=False`): code = RNE(|x| * S_enc / s_b) decided without forming the quotient:
  |x| * S_enc as an exact float32 pair (mul.rn, fma.rn error) against midpoint * s_b (exact);
- SM100 (`hw_e2m1=True`): the hardware conversion cvt.rn.satfinite.e2m1x2.f32 of q = (|x| S_enc) / s_b,
  rounded twice; rounding is monotone and every midpoint m times s_b is exact, so q can only land *on*
  a midpoint where the exact value lies beside it: there, and only there, the exact pair decides.
  (The conversion does not exist on sm_90a: cutedsl.md §1.3.)

One thread quantizes one 16-element block: 8 int32 words in (two bf16 each, little-endian), 2 words and
one scale byte out. Shapes are dynamic (one compile serves every row count and width).
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

from fp4check.kernels.cutedsl import ptx

THREADS = 128
# e2m1 midpoints between codes i and i+1, and whether a tie rounds up (to the even code i+1)
MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
TIE_UP = (False, True, False, True, False, True, False)


@cute.jit
def _above(p: Float32, err: Float32, t: Float32, tie_up: cutlass.Constexpr) -> Int32:
    """1 where the exact product p + err lies above t (or on it, when the tie rounds up)."""
    above = (p > t) | ((p == t) & (err > Float32(0.0)))
    if cutlass.const_expr(tie_up):
        above = above | ((p == t) & (err == Float32(0.0)))
    return Int32(above)


@cute.jit
def _code(p: Float32, err: Float32, s: Float32, hw_e2m1: cutlass.Constexpr) -> Int32:
    """e2m1 magnitude code of the exact |x| S_enc / s (s > 0), p + err = |x| S_enc exactly."""
    code = Int32(0)
    if cutlass.const_expr(hw_e2m1):
        q = ptx.div_rn(p, s)
        code = ptx.e2m1_code_hw(q)
        for i in cutlass.range_constexpr(len(MIDPOINTS)):
            exact = Int32(i) + _above(p, err, ptx.mul_rn(Float32(MIDPOINTS[i]), s), TIE_UP[i])
            code = cutlass.select_(q == Float32(MIDPOINTS[i]), exact, code)
    else:
        for i in cutlass.range_constexpr(len(MIDPOINTS)):
            code = code + _above(p, err, ptx.mul_rn(Float32(MIDPOINTS[i]), s), TIE_UP[i])
    return code


@cute.kernel
def _quant_kernel(
    x_words: cute.Tensor,  # int32 [P * K / 2]
    packed_words: cute.Tensor,  # int32 [P * K / 8]
    scales: cute.Tensor,  # uint8, the swizzled [Pp * Kp / 16] buffer
    g: cute.Tensor,  # fp32 [1] encode global scale
    rows: Int32,
    cols: Int32,
    hw_e2m1: cutlass.Constexpr,
):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    blocks_per_row = cols // 16
    b = bidx * THREADS + tidx
    if b < rows * blocks_per_row:
        row = b // blocks_per_row
        blk = b - row * blocks_per_row
        gs = Float32(g[0])
        base = b * 8
        bits = []
        amax_bits = Int32(0)
        bad = Int32(0)
        for w in cutlass.range_constexpr(8):
            word = Int32(x_words[base + w])
            for h in cutlass.range_constexpr(2):
                v = (word >> (16 * h)) & 0xFFFF
                bits.append(v)
                mag = v & 0x7FFF
                nonfinite = Int32(mag >= 0x7F80)
                bad = bad | nonfinite
                # finite magnitudes order as their bit patterns do
                amax_bits = cutlass.max(amax_bits, cutlass.select_(nonfinite == 1, Int32(0), mag))
        amax = ptx.f32_bits(amax_bits << 16)
        sb = cutlass.min(ptx.mul_rn(ptx.div_rn(amax, Float32(6.0)), gs), Float32(448.0))
        s_byte = ptx.e4m3_byte(sb)
        s_val = ptx.e4m3_value(s_byte)
        s_byte = cutlass.select_(bad == 1, Int32(0x7F), s_byte)
        usable = (bad == 0) & (s_val > Float32(0.0))
        s_safe = cutlass.select_(usable, s_val, Float32(1.0))
        for w in cutlass.range_constexpr(2):
            word = Int32(0)
            for j in cutlass.range_constexpr(8):
                v = bits[w * 8 + j]
                ax = ptx.f32_bits((v & 0x7FFF) << 16)
                p = ptx.mul_rn(ax, gs)
                err = ptx.fma_rn(ax, gs, -p)
                code = _code(p, err, s_safe, hw_e2m1) | ((v >> 12) & 8)
                code = cutlass.select_(usable, code, Int32(0))
                word = word | (code << (4 * j))
            packed_words[b * 2 + w] = word
        # 128x4 swizzle of the [P, K/16] scale grid
        col_tiles = (blocks_per_row + 3) // 4
        off = ((row // 128) * col_tiles + blk // 4) * 512 + (row % 32) * 16 + ((row % 128) // 32) * 4 + blk % 4
        scales[off] = cutlass.Uint8(s_byte)


@cute.jit
def quantize(
    x_ptr: cute.Pointer,  # bf16 [P, K] as int32 words
    packed_ptr: cute.Pointer,  # uint8 [P, K/2] as int32 words
    scale_ptr: cute.Pointer,  # uint8, the swizzled scale buffer
    g_ptr: cute.Pointer,  # fp32 [1]
    rows: Int32,
    cols: Int32,
    stream: cuda.CUstream,
    hw_e2m1: cutlass.Constexpr = False,
):
    n = rows * (cols // 16)
    x = cute.make_tensor(x_ptr, cute.make_layout(n * 8))
    packed = cute.make_tensor(packed_ptr, cute.make_layout(n * 2))
    col_tiles = (cols // 16 + 3) // 4
    scales = cute.make_tensor(scale_ptr, cute.make_layout(((rows + 127) // 128) * 128 * col_tiles * 4))
    g = cute.make_tensor(g_ptr, cute.make_layout(1))
    _quant_kernel(x, packed, scales, g, rows, cols, hw_e2m1).launch(
        grid=[(n + THREADS - 1) // THREADS, 1, 1], block=[THREADS, 1, 1], stream=stream
    )


ARG_TYPES = ((cutlass.Int32, 16), (cutlass.Int32, 8), (cutlass.Uint8, 4), (cutlass.Float32, 4))
