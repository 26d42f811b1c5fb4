"""Scalar PTX helpers for the DSL kernels: the IEEE-rounded float ops the exact NVFP4 decision needs
(the DSL's `*`, `/` and fused forms leave rounding and contraction to the compiler, which may pick
approximate division or contract a product into an fma), and the e4m3 / e2m1 conversions.

`cvt...e2m1x2` exists on sm_100a only (cutedsl.md §1.3); every other helper compiles for sm_90a too.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Uint32


def _ptx(code: str, out: type, *args):
    return cute.arch.inline_ptx(code, write_only_types=[out], read_only_args=list(args))


def f32_bits(bits: Int32) -> Float32:
    """The float32 whose bit pattern is `bits`."""
    return _ptx("mov.b32 {$w0}, {$r0};", Float32, Int32(bits))


def bits_f32(x: Float32) -> Int32:
    return _ptx("mov.b32 {$w0}, {$r0};", Int32, Float32(x))


def mul_rn(a: Float32, b: Float32) -> Float32:
    return _ptx("mul.rn.f32 {$w0}, {$r0}, {$r1};", Float32, Float32(a), Float32(b))


def fma_rn(a: Float32, b: Float32, c: Float32) -> Float32:
    return _ptx("fma.rn.f32 {$w0}, {$r0}, {$r1}, {$r2};", Float32, Float32(a), Float32(b), Float32(c))


def div_rn(a: Float32, b: Float32) -> Float32:
    return _ptx("div.rn.f32 {$w0}, {$r0}, {$r1};", Float32, Float32(a), Float32(b))


def e4m3_byte(x: Float32) -> Int32:
    """RNE e4m3 code of x (saturating at 448), in the low byte of an Int32."""
    pair = _ptx("cvt.rn.satfinite.e4m3x2.f32 {$w0}, {$r0}, {$r1};", cutlass.Int16, Float32(0.0), Float32(x))
    return Int32(pair) & 0xFF


def e4m3_value(byte: Int32) -> Float32:
    """float32 value of an e4m3 code (via the f16x2 conversion sm_89+ has)."""
    return _ptx(
        "{ .reg .b32 h; .reg .b16 lo, hi; cvt.rn.f16x2.e4m3x2 h, {$r0}; mov.b32 {lo, hi}, h; cvt.f32.f16 {$w0}, lo; }",
        Float32,
        cutlass.Int16(byte),
    )


def e2m1_code_hw(q: Float32) -> Int32:
    """RNE e2m1 magnitude code of q >= 0 by the hardware conversion (sm_100a and later only)."""
    pair = _ptx(
        "{ .reg .b8 c; cvt.rn.satfinite.e2m1x2.f32 c, {$r0}, {$r1}; cvt.u32.u8 {$w0}, c; }",
        Uint32,
        Float32(0.0),
        Float32(q),
    )
    return Int32(pair) & 0xF
