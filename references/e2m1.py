"""E2M1 (FP4) elements: encode with round-to-nearest-even, decode, pack two per byte.

Codes 0..7 are the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign (code 8 is -0).

Policy where implementations disagree (shared/spec/nvfp4.md §1.5):
- -0.0 and tiny negatives keep their sign: code 8, as torch and torchao do and as the hardware
  cvt.rn.satfinite.e2m1x2.f32 does. compressed-tensors and ModelOpt write code 0.
- NaN encodes as +6 (code 7): e2m1 has no NaN, and a saturated value is the more visible wrong value.
  ModelOpt does the same; torchao gives 3, compressed-tensors 0. The NVFP4 block codec (nvfp4.py) does
  not rely on this: a block holding NaN or Inf gets the e4m3 NaN scale, so it decodes to NaN.
- +-Inf and anything beyond 6 saturate to +-6.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_SIGN_BIT = 0x8
E2M1_NAN_CODE = 0x7
E2M1_AS_E4M3_GAIN = 2.0**-6  # what `e2m1_as_e4m3` bytes read as e4m3, relative to the e2m1 values

# Midpoints between neighbouring magnitudes, and whether a value exactly on the midpoint rounds up
# (ties to even: the neighbour with the even code wins).
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def e2m1_encode(x: torch.Tensor, divisor: torch.Tensor | float | None = None) -> torch.Tensor:
    """E2M1 codes (uint8, 0..15) of RNE(x / divisor), saturating at +-6.

    The quotient is never formed: |x| is compared with midpoint*divisor in float64. A midpoint has at
    most 3 significant bits, so the product is exact for any divisor with <= 50 significant bits, and
    ties are decided exactly (a float32 quotient can land on the wrong side of a midpoint).
    `divisor` must be positive and finite where given (broadcast against x).
    """
    xd = x.to(torch.float64)
    mag = xd.abs()
    d = (
        torch.ones((), dtype=torch.float64, device=x.device)
        if divisor is None
        else torch.as_tensor(divisor, dtype=torch.float64, device=x.device)
    )
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for mid, tie_up in _MIDPOINTS:
        bound = mid * d
        code += (mag >= bound if tie_up else mag > bound).to(torch.uint8)
    negative = torch.signbit(xd)
    code = torch.where(negative, code | E2M1_SIGN_BIT, code)
    return torch.where(torch.isnan(xd), torch.full_like(code, E2M1_NAN_CODE), code)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of E2M1 codes (uint8 0..15); code 8 decodes to -0.0."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"e2m1 codes must be uint8, got {codes.dtype}")
    if bool((codes > 15).any()):
        raise ValueError("e2m1 codes must be in 0..15")
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32, device=codes.device)
    return table[codes.long()]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes [..., K] (K even) into bytes [..., K/2]: element 2i in the low nibble of byte i."""
    if codes.shape[-1] % 2:
        raise ValueError(f"last dim must be even to pack e2m1 pairs, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_e2m1: bytes [..., K/2] (uint8 or int8) -> codes [..., K]."""
    b = packed.view(torch.uint8) if packed.dtype == torch.int8 else packed
    if b.dtype != torch.uint8:
        raise TypeError(f"packed e2m1 must be uint8 or int8, got {packed.dtype}")
    low, high = b & 0xF, b >> 4
    return torch.stack((low, high), dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


def e2m1_as_e4m3(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed e2m1 bytes (uint8) -> (low nibbles, high nibbles) as e4m3 bytes: magnitude bits at 2..4, sign
    at 7. Read as e4m3 they are the e2m1 values x 2^-6 for all 16 codes, subnormals and -0 included, so one
    fp8 -> f16 conversion decodes them exactly (the SM90 GEMM's weight decode, on 4 bytes at a time)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed e2m1 must be uint8, got {packed.dtype}")
    return ((packed & 0x7) << 2) | ((packed & 0x8) << 4), ((packed >> 2) & 0x1C) | (packed & 0x80)
