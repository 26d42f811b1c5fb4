"""The paged FP8 KV cache as a serving runtime keeps it: pages of `block` tokens in the 584-byte layout
(references.kv_layout), handed out from a pool in a shuffled order so that block tables are never the
identity (a kernel that indexes pages by logical block instead of through the table fails), the SWA ring
(the last `window` tokens at logical slot position % window) and the compressed-entry caches.

Ops (the contract's kv_cache_write, kv_cache_read, paged_attention) take the page tensor, the block size
and physical slots (page * block + offset).
"""

from __future__ import annotations

import torch

from fp4check.references.kv_layout import RECORD_BYTES, SCALE_BYTES, decode_kv, encode_kv, page_bytes
from fp4check.references.sparse_attention import sparse_attention

SWA_BLOCK = 64  # vLLM's DeepseekV4SWACache block


def _record_offsets(block: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    page, off = slots // block, slots % block
    return page, off * RECORD_BYTES, block * RECORD_BYTES + off * SCALE_BYTES


def _byte_index(block: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(page [N, 584], byte [N, 584]) of every byte of each slot's record and scales."""
    page, rec, scl = _record_offsets(block, slots)
    cols = torch.cat(
        [
            rec.unsqueeze(1) + torch.arange(RECORD_BYTES, device=slots.device),
            scl.unsqueeze(1) + torch.arange(SCALE_BYTES, device=slots.device),
        ],
        dim=1,
    )
    return page.unsqueeze(1).expand_as(cols), cols


def kv_cache_write(pages: torch.Tensor, block: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
    """Quantize kv bf16 [N, 512] and store each token's 584 bytes at its slot (pages uint8 [P, page_bytes])."""
    page, col = _byte_index(block, slots)
    pages[page, col] = encode_kv(kv)


def kv_cache_read(pages: torch.Tensor, block: int, slots: torch.Tensor) -> torch.Tensor:
    """bf16 [N, 512] dequantized from the slots' records."""
    page, col = _byte_index(block, slots)
    return decode_kv(pages[page, col])


def cache_rows(pages: torch.Tensor, block: int, slots: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 584] the stored bytes of each slot (what kv_write is compared on)."""
    page, col = _byte_index(block, slots)
    return pages[page, col]


def paged_attention(
    q: torch.Tensor, pages: torch.Tensor, block: int, slots: torch.Tensor, sink: torch.Tensor
) -> torch.Tensor:
    """Sparse attention with sink over the cache: query t attends to the kv at slots[t] (-1 skipped)."""
    flat = slots.reshape(-1)
    # -1 slots read nothing: slot 0 may be a poisoned page, and 0 * NaN would leak into the sum
    kv = torch.where((flat >= 0).unsqueeze(1), kv_cache_read(pages, block, flat.clamp(min=0)), 0.0)
    idx = torch.where(flat >= 0, torch.arange(flat.numel()), -1).view_as(slots)
    return sparse_attention(q, kv, idx, sink, q.shape[-1] ** -0.5).to(torch.bfloat16)


class PagePool:
    """Pages of one block size, poisoned with 0xFF (e4m3 NaN bytes) so that a read of a slot never
    written shows up as NaN, handed out in a seeded shuffled order."""

    POISON = 0xFF

    def __init__(self, n_pages: int, block: int, seed: int = 0):
        self.block = block
        self.pages = torch.full((n_pages, page_bytes(block)), self.POISON, dtype=torch.uint8)
        self._free = torch.randperm(n_pages, generator=torch.Generator().manual_seed(seed), device="cpu").tolist()

    def table(self, n_blocks: int) -> torch.Tensor:
        """A block table of n_blocks fresh pages."""
        if n_blocks > len(self._free):
            raise RuntimeError(f"page pool exhausted: {n_blocks} blocks wanted, {len(self._free)} free")
        taken, self._free = self._free[:n_blocks], self._free[n_blocks:]
        return torch.tensor(taken, dtype=torch.int64)


def slots_of(table: torch.Tensor, block: int, logical: torch.Tensor) -> torch.Tensor:
    """Physical slots of logical positions through a block table (-1 stays -1)."""
    safe = logical.clamp(min=0)
    phys = table[safe // block] * block + safe % block
    return torch.where(logical >= 0, phys, torch.full_like(phys, -1))


def blocks_for(n: int, block: int) -> int:
    return max(1, -(-n // block))
