"""MXFP4: e2m1 elements with one e8m0 (power-of-two) scale per 32 elements along K.

This is the format of the DeepSeek-V4 release's routed experts (`weight` int8 [N, K/2], `scale`
e8m0 [N, K/32]; W = e2m1 * 2^(e-127)) and of DeepSeek's FP4 activation quantizer (DS-KER
fp4_act_quant). The scale rule is DeepSeek's, 2^ceil(log2(amax/6)) with amax floored at 6*2^-126, so
the block maximum never saturates. The OCP MX rule (2^(floor(log2 amax) - 2)) can saturate the block
maximum; DeepSeek's code wins where the two disagree.
"""

from __future__ import annotations

import torch

from fp4check.references.e2m1 import E2M1_MAX, e2m1_decode, e2m1_encode, pack_e2m1, unpack_e2m1
from fp4check.references.fp8 import e8m0_decode, pow2_scale

MXFP4_BLOCK = 32
MXFP4_AMAX_FLOOR = E2M1_MAX * 2.0**-126


def mxfp4_quantize(x: torch.Tensor, block: int = MXFP4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (packed e2m1 uint8 [..., K/2], e8m0 bytes [..., K/block])."""
    *lead, k = x.shape
    if k % block:
        raise ValueError(f"last dim {k} is not a multiple of the MXFP4 block {block}")
    xb = x.to(torch.float32).reshape(*lead, k // block, block)
    stored, scale = pow2_scale(xb.abs().amax(-1), E2M1_MAX, MXFP4_AMAX_FLOOR)
    codes = e2m1_encode(xb, divisor=scale.unsqueeze(-1)).reshape(*lead, k)
    return pack_e2m1(codes), stored


def mxfp4_dequantize(packed: torch.Tensor, scale: torch.Tensor, block: int = MXFP4_BLOCK) -> torch.Tensor:
    """float32 values of packed e2m1 [..., K/2] (uint8 or int8) with e8m0 scales [..., K/block]."""
    codes = unpack_e2m1(packed)
    *lead, k = codes.shape
    if tuple(scale.shape) != (*lead, k // block):
        raise ValueError(f"MXFP4 scale shape {tuple(scale.shape)} does not match data {(*lead, k)} / {block}")
    values = e2m1_decode(codes).reshape(*lead, k // block, block) * e8m0_decode(scale).unsqueeze(-1)
    return values.reshape(*lead, k)
