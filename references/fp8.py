"""FP8 codecs: e4m3 values and block scales, e8m0 exponent bytes, DeepSeek FP8 block weights and
DeepSeek's power-of-two activation quantization.

Two traps handled once here:
- fp32 -> e4m3 overflow: torch 2.11 turns values above ~464 into NaN, torch 2.13 saturates to 448
  (pytorch PR #178817). Every cast clamps to +-448 first, so results do not depend on the torch version.
- e8m0 is an exponent byte, not a number. Converting the tensor numerically reads the byte of 2^-7
  (120) as 120.0 (vllm#43416) or copies 2^-7 into a uint8 as 0. e8m0 values live as raw bytes here and
  are decoded only by e8m0_decode, which refuses anything but bytes.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
E4M3_NAN_BYTE = 0x7F
E4M3_MIN_NORMAL = 2.0**-6
E4M3_MIN_SUBNORMAL = 2.0**-9
E8M0_BIAS = 127
E8M0_NAN_BYTE = 0xFF
# DeepSeek's activation quantizers floor the block amax before taking the scale (DS-KER act_quant).
DEEPSEEK_FP8_AMAX_FLOOR = 1e-4
FP8_WEIGHT_BLOCK = 128


# --- e4m3 -----------------------------------------------------------------------------------------


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn of x with round-to-nearest-even, saturating at +-448; NaN stays NaN (0x7F).

    x is cast to float32 first: callers compute scales in float32, as the kernels do.
    """
    return x.to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def e4m3_decode(x: torch.Tensor) -> torch.Tensor:
    """float32 values of e4m3 data given as float8_e4m3fn or as its raw uint8 bytes."""
    if x.dtype == torch.uint8:
        x = x.view(torch.float8_e4m3fn)
    if x.dtype != torch.float8_e4m3fn:
        raise TypeError(f"e4m3 data must be float8_e4m3fn or uint8 bytes, got {x.dtype}")
    return x.to(torch.float32)


# --- e8m0 -----------------------------------------------------------------------------------------


def e8m0_bytes(scale: torch.Tensor) -> torch.Tensor:
    """The raw exponent bytes (uint8) of an e8m0 tensor stored as float8_e8m0fnu or uint8.

    Any other dtype is refused: a float tensor here means someone already converted the bytes
    numerically, which is the bug this guard exists for.
    """
    if scale.dtype == torch.float8_e8m0fnu:
        return scale.view(torch.uint8)
    if scale.dtype == torch.uint8:
        return scale
    raise TypeError(
        f"e8m0 scales must be raw exponent bytes (uint8 or float8_e8m0fnu), got {scale.dtype}: "
        "a numeric conversion reads 2^-7 as 120.0 (or 0)"
    )


def e8m0_decode(scale: torch.Tensor) -> torch.Tensor:
    """float32 2^(byte-127) of e8m0 bytes; byte 255 is NaN."""
    b = e8m0_bytes(scale).to(torch.int32)
    value = torch.ldexp(torch.ones(b.shape, dtype=torch.float32, device=b.device), b - E8M0_BIAS)
    return torch.where(b == E8M0_NAN_BYTE, torch.full_like(value, float("nan")), value)


def e8m0_from_exponent(exponent: torch.Tensor) -> torch.Tensor:
    """e8m0 bytes (uint8) of 2^exponent; exponents are clamped to the representable -127..127."""
    return (exponent.to(torch.int32).clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)


def ceil_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(x)) for positive finite x (int32), without a floating-point log."""
    mantissa, exponent = torch.frexp(x.to(torch.float64))  # x = m * 2^e, m in [0.5, 1)
    return torch.where(mantissa == 0.5, exponent - 1, exponent).to(torch.int32)


def pow2_scale(amax: torch.Tensor, qmax: float, amax_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's power-of-two (UE8M0) scale 2^ceil(log2(max(amax, floor) / qmax)).

    Returns (e8m0 bytes uint8, float64 scale values). A non-finite amax (a NaN or Inf in the block)
    gives the e8m0 NaN byte and a NaN scale, so the block decodes to NaN instead of hiding it.
    """
    finite = torch.isfinite(amax)
    a = torch.where(finite, amax.to(torch.float64).clamp(min=amax_floor), torch.ones_like(amax, dtype=torch.float64))
    exponent = ceil_log2(a / qmax)
    stored = torch.where(finite, e8m0_from_exponent(exponent), torch.full_like(exponent, E8M0_NAN_BYTE).to(torch.uint8))
    return stored, e8m0_decode(stored).to(torch.float64)


# --- DeepSeek FP8 block weights (128x128 tiles, e8m0 or fp32 scales) -----------------------------


def _tile_amax(w: torch.Tensor, block: int) -> torch.Tensor:
    n, k = w.shape
    nt, kt = -(-n // block), -(-k // block)
    padded = torch.zeros(nt * block, kt * block, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.to(torch.float32).abs()
    return padded.view(nt, block, kt, block).amax(dim=(1, 3))


def _expand_tiles(scale: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    return scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :k]


def fp8_block_quantize(
    w: torch.Tensor, scale_fmt: str = "ue8m0", block: int = FP8_WEIGHT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight [N, K] to e4m3 with one scale per block x block tile.

    scale_fmt "ue8m0": scale = 2^ceil(log2(amax/448)), returned as e8m0 bytes (uint8) [N/128, K/128]
    (the DeepSeek-V4 release); "fp32": scale = amax/448 as float32 (Flash-Base). Tile amax is floored
    at 1e-4 so an all-zero tile gets a finite scale.
    """
    n, k = w.shape
    amax = _tile_amax(w, block).clamp(min=DEEPSEEK_FP8_AMAX_FLOOR)
    if scale_fmt == "ue8m0":
        scale_stored, scale_value = pow2_scale(amax, E4M3_MAX, DEEPSEEK_FP8_AMAX_FLOOR)
    elif scale_fmt == "fp32":
        scale_stored = (amax / E4M3_MAX).to(torch.float32)
        scale_value = scale_stored
    else:
        raise ValueError(f"unknown FP8 scale format {scale_fmt!r}: use 'ue8m0' or 'fp32'")
    q = e4m3_encode(w.to(torch.float32) / _expand_tiles(scale_value.to(torch.float32), n, k, block))
    return q, scale_stored


def fp8_block_dequantize(weight: torch.Tensor, scale: torch.Tensor, block: int = FP8_WEIGHT_BLOCK) -> torch.Tensor:
    """float32 W = e4m3(weight) * scale per block x block tile; scale is e8m0 bytes or float32."""
    n, k = weight.shape
    nt, kt = -(-n // block), -(-k // block)
    if tuple(scale.shape) != (nt, kt):
        raise ValueError(f"FP8 block scale shape {tuple(scale.shape)} does not match weight {n}x{k} (want {nt}x{kt})")
    if scale.dtype in (torch.uint8, torch.float8_e8m0fnu):
        scale_value = e8m0_decode(scale)
    elif scale.dtype in (torch.float32, torch.bfloat16):
        scale_value = scale.to(torch.float32)
    else:
        raise TypeError(f"FP8 block scale must be e8m0 bytes or float32, got {scale.dtype}")
    return e4m3_decode(weight) * _expand_tiles(scale_value, n, k, block)


# --- DeepSeek FP8 activation quantization (DS-KER act_quant) -------------------------------------


def act_quant_fp8(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's FP8 activation quantization with power-of-two scales, per 1 x block along the last dim.

    scale = 2^ceil(log2(max(amax, 1e-4) / 448)); q = e4m3(clamp(x / scale, +-448)). Returns
    (q float8_e4m3fn [..., K], e8m0 scale bytes [..., K/block]). block 128 for GEMM inputs,
    64 for the KV cache's no-rope dims.
    """
    *lead, k = x.shape
    if k % block:
        raise ValueError(f"last dim {k} is not a multiple of the block {block}")
    xb = x.to(torch.float32).reshape(*lead, k // block, block)
    stored, scale = pow2_scale(xb.abs().amax(-1), E4M3_MAX, DEEPSEEK_FP8_AMAX_FLOOR)
    q = e4m3_encode(xb / scale.unsqueeze(-1)).reshape(*lead, k)  # power-of-two divisor: exact
    return q, stored


def act_dequant_fp8(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    """float32 inverse of act_quant_fp8."""
    *lead, k = q.shape
    values = e4m3_decode(q).reshape(*lead, k // block, block) * e8m0_decode(scale).unsqueeze(-1)
    return values.reshape(*lead, k)
