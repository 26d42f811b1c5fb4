"""The Blackwell block-scale layout ("128x4", cuBLAS/tcgen05 SWIZZLE_32_4_4) and its inverse.

A logical scale matrix S [R, C] (C = K/16) is padded with zeros to Rp = 128*ceil(R/128) rows and
Cp = 4*ceil(C/4) columns, cut into 128x4 tiles in row-major tile order, and each tile is stored as
512 contiguous bytes laid out [32][4][4]:

    off(r, c) = ((r // 128) * (Cp // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4

Checkpoints store linear scales; kernels read this layout (shared/spec/nvfp4.md §3).
"""

from __future__ import annotations

import torch

SWIZZLE_ROWS = 128
SWIZZLE_COLS = 4
SWIZZLE_TILE_BYTES = SWIZZLE_ROWS * SWIZZLE_COLS


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    """Padded (rows, cols) of the swizzled layout."""
    return -(-rows // SWIZZLE_ROWS) * SWIZZLE_ROWS, -(-cols // SWIZZLE_COLS) * SWIZZLE_COLS


def swizzle_offset(r: int, c: int, cols: int) -> int:
    """Byte offset of S[r, c] in the swizzled layout of a matrix with `cols` scale columns."""
    col_tiles = -(-cols // SWIZZLE_COLS)
    tile = (r // SWIZZLE_ROWS) * col_tiles + c // SWIZZLE_COLS
    return tile * SWIZZLE_TILE_BYTES + (r % 32) * 16 + ((r % SWIZZLE_ROWS) // 32) * 4 + c % SWIZZLE_COLS


def swizzle_128x4(scales: torch.Tensor) -> torch.Tensor:
    """S [..., R, C] -> flat swizzled [..., Rp*Cp] (same dtype; zero padding)."""
    *lead, rows, cols = scales.shape
    rp, cp = swizzled_shape(rows, cols)
    raw = scales.view(torch.uint8) if scales.element_size() == 1 else scales
    padded = torch.zeros(*lead, rp, cp, dtype=raw.dtype, device=raw.device)
    padded[..., :rows, :cols] = raw
    tiles = padded.reshape(*lead, rp // 128, 4, 32, cp // 4, 4)
    n = len(lead)
    order = (*range(n), n + 0, n + 3, n + 2, n + 1, n + 4)
    out = tiles.permute(order).reshape(*lead, rp * cp)
    return out.view(scales.dtype) if scales.element_size() == 1 else out


def unswizzle_128x4(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of swizzle_128x4: flat [..., Rp*Cp] -> S [..., rows, cols]."""
    *lead, size = swizzled.shape
    rp, cp = swizzled_shape(rows, cols)
    if size != rp * cp:
        raise ValueError(f"swizzled scale has {size} elements; {rows}x{cols} scales need {rp * cp}")
    raw = swizzled.view(torch.uint8) if swizzled.element_size() == 1 else swizzled
    tiles = raw.reshape(*lead, rp // 128, cp // 4, 32, 4, 4)
    n = len(lead)
    order = (*range(n), n + 0, n + 3, n + 2, n + 1, n + 4)  # (rt, ct, b, a, ci) -> (rt, a, b, ct, ci)
    out = tiles.permute(order).reshape(*lead, rp, cp)[..., :rows, :cols].contiguous()
    return out.view(swizzled.dtype) if swizzled.element_size() == 1 else out
