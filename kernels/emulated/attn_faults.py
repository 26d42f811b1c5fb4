"""The attention faults of `--inject` (see faults.FAULTS): the bug, as a kernel would have it."""

from __future__ import annotations

import torch

from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.references.common import rms_norm
from fp4check.references.compressor import compressor_logits
from fp4check.references.fp8 import E4M3_MAX, e4m3_encode, pow2_scale
from fp4check.references.kv_layout import NOPE_DIM, TILE
from fp4check.references.rope import rope_angles


def rope_rotate_half(x: torch.Tensor, angles: torch.Tensor, rope_dim: int, inverse: bool = False) -> torch.Tensor:
    """RoPE on (i, i + rope_dim/2) pairs (NeoX rotate-half) instead of DeepSeek's interleaved (2i, 2i+1)."""
    nope, r = x[..., :-rope_dim], x[..., -rope_dim:].to(torch.float32)
    a = angles.reshape(angles.shape[0], *([1] * (x.dim() - 2)), angles.shape[-1])
    cos, sin = torch.cos(a), torch.sin(a) * (-1 if inverse else 1)
    lo, hi = r[..., : rope_dim // 2], r[..., rope_dim // 2 :]
    return torch.cat([nope, torch.cat([lo * cos - hi * sin, lo * sin + hi * cos], -1).to(x.dtype)], -1)


def compressor_overlap_shifted(x: torch.Tensor, w) -> torch.Tensor:
    """The CSA compressor with its overlap one window off: entry w pools Ca of window w-2, not w-1."""
    p = w.params
    c, ratio = p.compressor, p.ratio
    a, z = compressor_logits(x, c["wkv"], c["wgate"], c["ape"], ratio)
    n, _, width = a.shape
    d = width // 2
    sa = torch.zeros(n, 2 * ratio, d)
    sz = torch.full((n, 2 * ratio, d), float("-inf"))
    sa[:, ratio:], sz[:, ratio:] = a[..., d:], z[..., d:]
    sa[2:, :ratio], sz[2:, :ratio] = a[:-2, :, :d], z[:-2, :, :d]
    pooled = (sa * torch.softmax(sz, dim=1)).sum(1)
    normed = rms_norm(pooled.to(torch.bfloat16).float(), c["norm"], p.eps)
    from fp4check.references.rope import apply_rope

    return apply_rope(normed, rope_angles(torch.arange(n) * ratio, p.freqs), p.rope_dim).to(torch.bfloat16)


def kv_write_linear_scale(pages: torch.Tensor, block: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
    """Quantizes with the exact scale amax/448 but stores the power-of-two exponent the layout has room
    for: the reader multiplies by a scale up to 2x off."""
    nope = kv[:, :NOPE_DIM].float().view(kv.shape[0], -1, TILE)
    amax = nope.abs().amax(-1).clamp(min=1e-4)
    q = e4m3_encode(nope / (amax / E4M3_MAX).unsqueeze(-1)).view(kv.shape[0], NOPE_DIM)
    stored, _ = pow2_scale(amax, E4M3_MAX, 1e-4)
    rows = torch.cat(
        [
            q.view(torch.uint8),
            kv[:, NOPE_DIM:].contiguous().view(torch.uint8),
            stored.view(torch.uint8),
            torch.zeros(kv.shape[0], 1, dtype=torch.uint8),
        ],
        dim=1,
    )
    page, col = kvc._byte_index(block, slots)
    pages[page, col] = rows


class StaleEntryCache:
    """A compressed-entry cache per entry shape (one per compression ratio and length), allocated once per
    backend and reused by every later layer without being rewritten: layer 2 (C128A) reads layer 0's."""

    def __init__(self):
        self.entries: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, entries: torch.Tensor) -> torch.Tensor:
        return self.entries.setdefault(tuple(entries.shape), entries.clone())
