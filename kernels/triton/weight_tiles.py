"""The Triton grouped GEMM's weight layout, made once per weight (the backend's `prepare_weights`, a
runner's process-weights-after-loading step): each expert's packed e2m1 [N, K/2] and e4m3 scales
[N, K/16] reordered as [N/64, K/128, 64, 64 bytes] and [N/64, K/128, 64, 8], so the 64 rows of a
column group read one 4 KB block of codes and one 512-byte block of scales per 128-wide K step.

Measured on an H100 at the Pro shapes (bench/results/h100_triton_bench_20261122c.csv): the checkpoint's
row layout hands the GEMM 64 bytes per row per K step with rows 3.5 KB apart, and the weight stream, not
the decode, set its pace. The reorder is a permutation of bytes, so the GEMM is bit-equal in both layouts.

On the GPU the reorder runs in place, a chunk of experts at a time, and `untile_` undoes it: fp4check
checks full-size layers within 1.5x the weights' bytes, which a second copy would break. Pure torch: no
Triton needed, so CI tests it on the CPU.
"""

from __future__ import annotations

import torch

ROWS = 64  # rows of a column group: the GEMM's column tiles are multiples of it
K_STEP = 128  # the GEMM's K step (elements): grouped_gemm reads it from here
LAYOUT = "triton-tiled64x128"  # GroupedNVFP4.layout of tiled weights
CHUNK_BYTES = 256 << 20  # experts reordered at a time: the temporary copy's bound


def tileable(n: int, k: int) -> bool:
    return n % ROWS == 0 and k % K_STEP == 0


def _reorder_(t: torch.Tensor, width: int, inverse: bool) -> None:
    """In place over each expert's [N, C] bytes (C = K/2 or K/16 per row):
    [N/64, 64, K/128, width] -> [N/64, K/128, 64, width], or back where inverse."""
    e, n, c = t.shape
    steps = c // width
    per = max(1, CHUNK_BYTES // max(1, n * c))
    for lo in range(0, e, per):
        chunk = t[lo : lo + per]
        m = chunk.shape[0]
        if inverse:
            src = chunk.view(m, n // ROWS, steps, ROWS, width).permute(0, 1, 3, 2, 4)
        else:
            src = chunk.view(m, n // ROWS, ROWS, steps, width).permute(0, 1, 3, 2, 4)
        chunk.copy_(src.contiguous().view(m, n, c))


def tile_(packed: torch.Tensor, scales: torch.Tensor) -> None:
    """Reorder packed uint8 [E, N, K/2] and scales [E, N, K/16] (any 1-byte dtype) in place."""
    _reorder_(packed, K_STEP // 2, inverse=False)
    _reorder_(scales.view(torch.uint8), K_STEP // 16, inverse=False)


def untile_(packed: torch.Tensor, scales: torch.Tensor) -> None:
    """The inverse of `tile_`, in place."""
    _reorder_(packed, K_STEP // 2, inverse=True)
    _reorder_(scales.view(torch.uint8), K_STEP // 16, inverse=True)
