"""The SM90 grouped GEMM's tile plan, built on the GPU: per 128-row block of the expert-sorted rows, the one
token tile that covers its live rows, sized to them (16, 32, 64 or 128 rows), so that a block with 5 tokens
costs a 16-row MMA and not a 64-row one.

Why a plan. The GEMM decodes an expert's whole weight slice for every token tile, whatever its fill; at
the Pro shapes with skewed routing (bench: popularity ~ 1/rank^1.2) 207 of 384 experts get fewer than 16
tokens and 29 experts hold 69% of them, so one token tile size either pays a 64-row MMA for a handful of
rows or splits the hot experts into many tiles. The plan gives each block its own size; the kernel runs
one persistent launch per size over that size's list.

Here is the rule, in torch (`plan_reference`: pure torch, so CI tests it on the CPU); `grouped_gemm_sm90`
builds the same plan with one Triton program (its test holds the two equal). `live` holds one flag per 16 rows
(non-zero A scales, `grouped_gemm._prep_a_kernel`); a block's tile is the smallest size in TOKEN_TILES
that reaches past its last live 16-row chunk. A block with no live row, or at or past offsets[-1] (a plan
sized before routing), gets a 16-row tile with no K steps. Every tile starts at its block's first row and
the kernel writes zeros over the rest of the block (rows with zero scales are zero rows of A, so their
products are zeros), which keeps the contract that every row past the live ones comes out as zeros.

An entry is row0 * 2 + (1 if the tile has K steps); counts[i] is the length of list i. Nothing here syncs
with the host, so a CUDA graph captures the plan with the GEMM.
"""

from __future__ import annotations

import torch

TOKEN_TILES = (16, 32, 64, 128)
CHUNK = 16  # rows a live flag covers
BLOCK = 128  # rows of a plan block: the padding unit of the expert-sorted rows


def plan_reference(live: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    """The plan's lists of entries, block order within each list, for 16-row live flags [rows / 16] and
    offsets [E + 1] on any device."""
    flags = live.reshape(-1, BLOCK // CHUNK) > 0
    blocks = flags.shape[0]
    chunk = torch.arange(BLOCK // CHUNK, device=live.device)
    last = torch.where(flags, chunk, -1).amax(dim=1)
    starts = torch.arange(blocks, device=live.device) * BLOCK
    last = torch.where(starts < offsets[-1], last, -1)
    cls = torch.bucketize(last, torch.tensor([0, 1, 3], device=live.device))  # last <= 0, 1, <= 3, more
    entry = starts * 2 + (last >= 0).long()
    return [entry[cls == c].tolist() for c in range(len(TOKEN_TILES))]
