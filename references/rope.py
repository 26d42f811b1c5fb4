"""Rotary position embedding of DeepSeek-V4 (shared/spec/deepseek_v4.md §2.6): interleaved pairs (2i, 2i+1)
of the last `rope_dim` channels, one frequency per pair, computed in float32; YaRN frequency blending on
compressed layers (θ = compress_rope_theta); SWA layers use the base θ without YaRN; no attention mscale.
"""

from __future__ import annotations

import math

import torch

from fp4check.config import RopeConfig


def _correction_dim(rotations: float, dim: int, base: float, max_len: int) -> float:
    return dim * math.log(max_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_frequencies(rope: RopeConfig, rope_dim: int) -> torch.Tensor:
    """[rope_dim/2] float32 angular frequencies (DS-REF precompute_freqs_cis)."""
    half = rope_dim // 2
    freqs = 1.0 / (rope.theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))
    if not rope.yarn or rope.original_max_position_embeddings <= 0:
        return freqs
    low = max(
        math.floor(_correction_dim(rope.beta_fast, rope_dim, rope.theta, rope.original_max_position_embeddings)), 0
    )
    high = min(
        math.ceil(_correction_dim(rope.beta_slow, rope_dim, rope.theta, rope.original_max_position_embeddings)),
        rope_dim - 1,
    )
    if low == high:
        high += 0.001
    ramp = ((torch.arange(half, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    smooth = 1 - ramp
    return freqs / rope.factor * (1 - smooth) + freqs * smooth


def rope_angles(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """[T, rope_dim/2] angles position * frequency (float32)."""
    return positions.to(torch.float32).unsqueeze(-1) * freqs


def apply_rope(x: torch.Tensor, angles: torch.Tensor, rope_dim: int, inverse: bool = False) -> torch.Tensor:
    """Rotate the last rope_dim channels of x [T, ..., D] as complex pairs (x[2i] + i x[2i+1]) by e^{i angle}
    (e^{-i angle} when inverse), in float32, written back in x's dtype. angles [T, rope_dim/2] broadcast over
    the middle (head) dims."""
    nope, rope = x[..., :-rope_dim], x[..., -rope_dim:].to(torch.float32)
    a = angles.reshape(angles.shape[0], *([1] * (x.dim() - 2)), angles.shape[-1])
    cos, sin = torch.cos(a), torch.sin(a)
    if inverse:
        sin = -sin
    even, odd = rope[..., 0::2], rope[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat([nope, rotated.to(x.dtype)], dim=-1)
