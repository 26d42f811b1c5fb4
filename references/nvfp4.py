"""NVFP4: e2m1 elements in blocks of 16 along K, one e4m3 scale per block, one fp32 global scale.

The global scale has two conventions that differ by an inversion (shared/spec/nvfp4.md §1.3, §2):
- EncodeScale, S_enc = 448*6/amax, multiplies values into the quantized domain. compressed-tensors
  stores it (`weight_global_scale`, `input_global_scale`); kernels take it as an argument
  (vLLM `input_global_scale_inv`, FlashInfer `global_scale`).
- DecodeScale, S_dec = amax/2688 = 1/S_enc. ModelOpt stores it (`weight_scale_2`, `input_scale`),
  torchao calls it `per_tensor_scale`; the GEMM epilogue is alpha = S_dec_a * S_dec_b.
They are distinct types, and every function here refuses a bare number, so a ModelOpt decode scale
cannot be passed where an encode scale belongs. Converting between them is a float32 reciprocal, as
vLLM does at load time; it is not an exact involution, so a tensor keeps the scale it was given.

Arithmetic (what "exact" means here):
- the arithmetic follows the convention the global scale is given in, because that is what its
  producers compute, and it needs no reciprocal:
  EncodeScale: s_b = e4m3(fp32(fp32(amax_b / 6) * S_enc)), the order of the NVIDIA kernels
  (vLLM/FlashInfer cvt_warp_fp16_to_fp4) and compressed-tensors; code = RNE_e2m1(x * S_enc / s_b).
  DecodeScale: s_b = e4m3(fp32(fp32(amax_b / 6) / S_dec)), torchao's order; code = RNE_e2m1(x / (s_b * S_dec)).
  Block scales are clamped to 448 before the cast. Element codes are decided exactly: e2m1_encode
  compares a numerator with midpoint * divisor in float64, where every product involved is exact.
- dequantized value = e2m1 * s_b * S_dec in float32 (e2m1 * s_b is exact; one rounding).

Special blocks (implementation-defined across libraries, spec §1.6; fp4check's policy):
- a block whose scale rounds to zero (all-zero block, or a tiny block whose scale underflows e4m3)
  stores scale byte 0x00 and codes 0, and dequantizes to 0 -- what the vLLM/FlashInfer CUDA kernel does;
- a block holding NaN or +-Inf stores the e4m3 NaN scale (0x7F) and codes 0, so all 16 values
  dequantize to NaN: the non-finite input stays visible and stays in its block;
- the global amax ignores non-finite values, so one bad element cannot poison every block
  (ModelOpt's behaviour); an all-zero tensor gets S_enc = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4check.references.e2m1 import _MIDPOINTS, E2M1_MAX, e2m1_decode, e2m1_encode, pack_e2m1, unpack_e2m1
from fp4check.references.fp8 import E4M3_MAX, E4M3_NAN_BYTE, e4m3_decode, e4m3_encode

NVFP4_BLOCK = 16
GLOBAL_SCALE_NUMERATOR = E4M3_MAX * E2M1_MAX  # 2688: S_enc = 2688 / amax


def _fp32_tensor(value: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a float32 tensor, got {type(value).__name__}")
    if value.dtype != torch.float32:
        raise TypeError(f"{what} must be float32, got {value.dtype}")
    return value


@dataclass(frozen=True)
class EncodeScale:
    """S_enc = 448*6/amax: compressed-tensors `*_global_scale`, kernel `global_scale` arguments."""

    value: torch.Tensor  # float32, scalar or one per leading index (e.g. per expert)

    def __post_init__(self) -> None:
        _fp32_tensor(self.value, "EncodeScale.value")

    def to_decode(self) -> DecodeScale:
        return DecodeScale(torch.reciprocal(self.value))

    def to_encode(self) -> EncodeScale:
        return self


@dataclass(frozen=True)
class DecodeScale:
    """S_dec = amax/2688 = 1/S_enc: ModelOpt `weight_scale_2` / `input_scale`, torchao per_tensor_scale."""

    value: torch.Tensor

    def __post_init__(self) -> None:
        _fp32_tensor(self.value, "DecodeScale.value")

    def to_encode(self) -> EncodeScale:
        return EncodeScale(torch.reciprocal(self.value))

    def to_decode(self) -> DecodeScale:
        return self


GlobalScale = EncodeScale | DecodeScale


def _check_global(scale: object) -> GlobalScale:
    if not isinstance(scale, (EncodeScale, DecodeScale)):
        raise TypeError(
            f"a global scale must be EncodeScale (448*6/amax) or DecodeScale (amax/2688), got "
            f"{type(scale).__name__}: say which convention the number follows"
        )
    return scale


def finite_amax(x: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """max |x| over finite elements (float32); 0 where there are none."""
    a = x.to(torch.float32).abs()
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    return a.amax() if dim is None else a.amax(dim=dim)


def global_encode_scale(amax: torch.Tensor) -> EncodeScale:
    """S_enc = fp32(2688 / amax); an amax of 0 gives 1 (every block of such a tensor is zero anyway)."""
    a = amax.to(torch.float32)
    return EncodeScale(torch.where(a > 0, GLOBAL_SCALE_NUMERATOR / a, torch.ones_like(a)))


def global_decode_scale(amax: torch.Tensor) -> DecodeScale:
    """S_dec = fp32(amax / 2688), the value ModelOpt writes as weight_scale_2 / input_scale."""
    return DecodeScale(amax.to(torch.float32) / GLOBAL_SCALE_NUMERATOR)


def _per_leading(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Broadcast a scalar or per-leading-index scale against a tensor of ndim dims."""
    return value.reshape(()) if value.numel() == 1 else value.reshape(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class NVFP4Tensor:
    """A quantized tensor [..., K]: packed codes [..., K/2], linear e4m3 scales [..., K/16], global scale."""

    packed: torch.Tensor  # uint8
    scales: torch.Tensor  # float8_e4m3fn, linear (not swizzled) layout
    global_scale: GlobalScale

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.packed.shape[:-1], self.packed.shape[-1] * 2)

    def codes(self) -> torch.Tensor:
        return unpack_e2m1(self.packed)

    def dequantize(self) -> torch.Tensor:
        return nvfp4_dequantize(self.packed, self.scales, self.global_scale)


def nvfp4_block_scales(x: torch.Tensor, global_scale: GlobalScale) -> torch.Tensor:
    """e4m3 block scales [..., K/16] of x under the given global scale (see module docstring)."""
    g = _check_global(global_scale)
    *lead, k = x.shape
    xb = x.to(torch.float32).reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
    amax_b = finite_amax(xb, dim=-1)
    gv = _per_leading(g.value, amax_b.dim())
    s = e4m3_encode((amax_b / E2M1_MAX) * gv if isinstance(g, EncodeScale) else (amax_b / E2M1_MAX) / gv)
    bad = (~torch.isfinite(xb)).any(-1)
    return torch.where(bad, torch.full_like(s.view(torch.uint8), E4M3_NAN_BYTE), s.view(torch.uint8)).view(
        torch.float8_e4m3fn
    )


def _rounding_terms(
    xb: torch.Tensor, scales: torch.Tensor, global_scale: GlobalScale
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(numerator, divisor, usable) in float64 with code = RNE(numerator / divisor), all products exact.

    xb is [..., K/16, 16]; `usable` marks blocks whose scale is positive and finite.
    """
    g = _check_global(global_scale)
    gv = _per_leading(g.value, xb.dim()).to(torch.float64)
    s = e4m3_decode(scales).to(torch.float64).unsqueeze(-1)
    usable = ((s > 0) & torch.isfinite(s)).expand_as(xb)
    x = xb.to(torch.float64)
    if isinstance(g, EncodeScale):
        return x * gv, s.expand_as(xb), usable  # float32 x float32: 48 significant bits
    return x, (s * gv).expand_as(xb), usable  # e4m3 x float32: 28 significant bits


def nvfp4_quantize(x: torch.Tensor, global_scale: GlobalScale | None = None) -> NVFP4Tensor:
    """Two-level NVFP4 quantization of x [..., K] (K a multiple of 16) along the last dim.

    Without a global scale, S_enc comes from the finite amax of the whole tensor; for per-expert
    scales pass one value per leading index.
    """
    *lead, k = x.shape
    if k % NVFP4_BLOCK:
        raise ValueError(f"NVFP4 needs the last dim to be a multiple of {NVFP4_BLOCK}, got {k}")
    if global_scale is None:
        global_scale = global_encode_scale(finite_amax(x))
    scales = nvfp4_block_scales(x, global_scale)
    xb = x.to(torch.float32).reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
    numerator, divisor, usable = _rounding_terms(xb, scales, global_scale)
    codes = e2m1_encode(numerator, divisor=torch.where(usable, divisor, torch.ones_like(divisor)))
    codes = torch.where(usable, codes, torch.zeros_like(codes))
    return NVFP4Tensor(pack_e2m1(codes.reshape(*lead, k)), scales, global_scale)


def nvfp4_dequantize(packed: torch.Tensor, scales: torch.Tensor, global_scale: GlobalScale) -> torch.Tensor:
    """float32 values e2m1 * s_b * S_dec of packed codes [..., K/2] with linear scales [..., K/16]."""
    dec = _check_global(global_scale).to_decode().value
    codes = unpack_e2m1(packed)
    *lead, k = codes.shape
    if tuple(scales.shape) != (*lead, k // NVFP4_BLOCK):
        raise ValueError(f"NVFP4 scale shape {tuple(scales.shape)} does not match data {(*lead, k)} / 16")
    values = e2m1_decode(codes).reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK) * e4m3_decode(scales).unsqueeze(-1)
    return (values * _per_leading(dec, values.dim())).reshape(*lead, k)


TIE_RELATIVE_TOLERANCE = 1e-6


def rounding_ties(
    x: torch.Tensor, scales: torch.Tensor, global_scale: GlobalScale, rel: float = TIE_RELATIVE_TOLERANCE
) -> torch.Tensor:
    """Mask [..., K]: elements whose exact scaled value lies within `rel` (relative) of an e2m1 midpoint.

    Implementations form the quotient in float32 by different routes (x * (S_enc / s_b), x / (s_b * S_dec),
    a reciprocal of the decode scale, bf16 intermediates), so next to a midpoint they may land on either
    neighbour. One code of difference is allowed at these elements and nowhere else.
    """
    *lead, k = x.shape
    xb = x.to(torch.float32).reshape(*lead, k // NVFP4_BLOCK, NVFP4_BLOCK)
    numerator, divisor, usable = _rounding_terms(xb, scales, global_scale)
    tie = torch.zeros_like(usable)
    for mid, _ in _MIDPOINTS:
        bound = mid * divisor
        tie |= (numerator.abs() - bound).abs() <= rel * bound
    return (tie & usable).reshape(*lead, k)
