"""The SM90 GEMM's tile plan rule (kernels/triton/tile_plan.py): pure torch, so on the CPU. The GPU builds
the same lists (tests/test_gpu_backends.py holds them equal)."""

import torch

from fp4check.kernels.triton.tile_plan import BLOCK, CHUNK, TOKEN_TILES, plan_reference


def test_each_block_gets_the_smallest_tile_past_its_last_live_chunk():
    """Hand-made flags: full, first chunk only, second only, none, chunks 0..2, chunk 4 only, and a block
    past offsets[-1] whose flags are set (a plan sized before routing: no K steps)."""
    flags = [
        [1] * 8,
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0] * 8,
        [1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [1] * 8,
    ]
    live = torch.tensor(flags, dtype=torch.int32).flatten()
    offsets = torch.tensor([0, 256, 768], dtype=torch.int64)  # 6 blocks of rows; block 6 is past the end
    entry = [b * 256 + 1 for b in range(7)]  # row0 * 2 + has K steps
    dead = [3 * 256, 6 * 256]
    assert plan_reference(live, offsets) == [[entry[1], dead[0], dead[1]], [entry[2]], [entry[4]], [entry[0], entry[5]]]


def test_every_live_row_is_inside_its_blocks_tile_and_the_tile_is_minimal():
    """Random flags: each block appears in exactly one list, live iff it has a live chunk before
    offsets[-1]; its tile [row0, row0 + BT) covers every live chunk and the next smaller size would not."""
    g = torch.Generator().manual_seed(0)
    blocks = 300
    live = (torch.rand(blocks * BLOCK // CHUNK, generator=g) < 0.15).int() * torch.randint(1, 9, (1,), generator=g)
    offsets = torch.tensor([0, 128 * 250], dtype=torch.int64)
    plan = plan_reference(live, offsets)
    seen = {}
    for size, entries in zip(TOKEN_TILES, plan, strict=True):
        for e in entries:
            row0, has_k = divmod(e, 2)
            assert row0 % BLOCK == 0 and row0 // BLOCK not in seen
            seen[row0 // BLOCK] = (size, has_k)
    assert sorted(seen) == list(range(blocks))
    flags = live.reshape(blocks, -1) > 0
    for b, (size, has_k) in seen.items():
        chunks = flags[b].nonzero().flatten().tolist() if b < 250 else []
        assert has_k == (len(chunks) > 0)
        if chunks:
            reach = (max(chunks) + 1) * CHUNK
            assert reach <= size and (size == TOKEN_TILES[0] or reach > size // 2), (b, size, chunks)
        else:
            assert size == TOKEN_TILES[0]
    for entries in plan:  # block order within a list: neighbours in a list are neighbours in the rows
        assert entries == sorted(entries)
