"""Small pieces of DeepSeek-V4 math shared by several blocks (shared/spec/deepseek_v4.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * weight (no weight: the unweighted norm)."""
    xf = x.to(torch.float32)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight.to(torch.float32)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float | None) -> torch.Tensor:
    """silu(min(gate, limit)) * clamp(up, -limit, limit), in float32 (DS-REF Expert, spec §2.10).

    The gate is clamped above only, the up projection on both sides; limit None disables the clamp.
    """
    g, u = gate.to(torch.float32), up.to(torch.float32)
    if limit is not None:
        g = g.clamp(max=limit)
        u = u.clamp(-limit, limit)
    return F.silu(g) * u
