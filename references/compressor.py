"""KV compressors of the compressed attention layers (shared/spec/deepseek_v4.md §2.7), in float32.

Per token: a = x W_kv^T, z = x W_gate^T + ape[position mod ratio]. HCA (ratio 128): entry w is the
per-channel softmax over the window's 128 tokens of z, weighting a. CSA (ratio 4, overlapping): each
token's 2*d_c-wide a/z splits into Ca (first half) and Cb (second half); entry w takes a per-channel
softmax over 8 slots, Ca of window w-1's 4 tokens then Cb of window w's 4 tokens (window 0's Ca slots are
empty: a = 0, z = -inf). Entries are RMS-normalized (with weight) and rotated at position w * ratio with
the compressed layers' RoPE. Only complete windows emit an entry.
"""

from __future__ import annotations

import torch

from fp4check.references.common import rms_norm
from fp4check.references.rope import apply_rope, rope_angles


def compressor_logits(
    x: torch.Tensor, wkv: torch.Tensor, wgate: torch.Tensor, ape: torch.Tensor, ratio: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, z) [W, ratio, c*d_c] for the complete windows of x [T, D]."""
    n = x.shape[0] // ratio * ratio
    xf = x[:n].to(torch.float32)
    width = wkv.shape[0]  # explicit: a prompt shorter than one window has no rows to infer it from
    a = (xf @ wkv.to(torch.float32).t()).view(n // ratio, ratio, width)
    z = (xf @ wgate.to(torch.float32).t()).view(n // ratio, ratio, width) + ape.to(torch.float32)
    return a, z


def pool_hca(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """[W, d_c]: per-channel softmax over each window's positions."""
    return (a * torch.softmax(z, dim=1)).sum(1)


def pool_csa(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """[W, d_c]: per-channel softmax over 8 slots, the previous window's Ca then this window's Cb."""
    w, ratio, width = a.shape
    d = width // 2
    slots_a = torch.zeros(w, 2 * ratio, d)
    slots_z = torch.full((w, 2 * ratio, d), float("-inf"))
    slots_a[:, ratio:], slots_z[:, ratio:] = a[..., d:], z[..., d:]
    slots_a[1:, :ratio], slots_z[1:, :ratio] = a[:-1, :, :d], z[:-1, :, :d]
    return (slots_a * torch.softmax(slots_z, dim=1)).sum(1)


def compress(
    x: torch.Tensor,
    wkv: torch.Tensor,
    wgate: torch.Tensor,
    ape: torch.Tensor,
    norm: torch.Tensor,
    ratio: int,
    freqs: torch.Tensor,
    rope_dim: int,
    eps: float,
) -> dict[str, torch.Tensor]:
    """{"pooled": [W, d_c] before the norm, "entries": [W, d_c] normalized and rotated at w * ratio}."""
    a, z = compressor_logits(x, wkv, wgate, ape, ratio)
    pooled = pool_csa(a, z) if ratio == 4 else pool_hca(a, z)
    normed = rms_norm(pooled, norm, eps)
    positions = torch.arange(pooled.shape[0]) * ratio
    return {"pooled": pooled, "entries": apply_rope(normed, rope_angles(positions, freqs), rope_dim)}


def visible_entries(t: int, ratio: int) -> int:
    """How many compressed entries query position t may see: entry w needs its whole window, w*ratio+ratio-1 <= t."""
    return (t + 1) // ratio
