"""The FP8 KV-cache write in Triton: kv bf16 [N, 512] quantized and stored at each slot's place in the
pages, in the 584-byte layout of references.kv_layout (DeepSeek-V4 / FlashMLA MODEL1_FP8Sparse): per
token 448 e4m3 bytes of the no-rope channels, the 64 rope channels as bf16, and in the page's scale area
7 ue8m0 exponents (one per 64 channels) and a zero pad byte.

Byte for byte the codec: scale 2^e with e = ceil(log2(max(amax, 1e-4) / 448)) taken from the bits of
a = max(amax, 1e-4) = m 2^E (m in [1, 2)): a / 448 = (m / 1.75) 2^(E-8), so e = E - 8, plus 1 where
m > 1.75 (no log, no division); q = e4m3(clamp(x 2^-e, +-448)), exact scaling then one RNE cast; a tile
holding NaN or Inf gets the e8m0 NaN byte 0xFF and e4m3 NaN (0x7F) codes, as the codec's x / NaN gives.
One program per token; slots address pages directly (slot = page * block + offset), so the write order
of a shuffled block table is the kernel's own problem, as in a serving runtime.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4check.references.kv_layout import HEAD_DIM, NOPE_DIM, RECORD_BYTES, ROPE_DIM, SCALE_BYTES, TILE, page_bytes

AMAX_FLOOR_BITS = tl.constexpr(0x38D1B717)  # float32(1e-4), DeepSeek's amax floor


@triton.jit
def _kv_write_kernel(kv_ptr, slots_ptr, pages_ptr, page_stride, block, NOPE: tl.constexpr, ROPE: tl.constexpr,
                     TILE: tl.constexpr, RECORD: tl.constexpr, SCALES: tl.constexpr):  # fmt: skip
    i = tl.program_id(0)
    slot = tl.load(slots_ptr + i)
    page, off = slot // block, slot % block
    base = pages_ptr + page * page_stride
    row = kv_ptr + i.to(tl.int64) * (NOPE + ROPE)
    t = tl.arange(0, SCALES)  # 8 >= 7 tiles (arange wants a power of 2); the 8th is masked off
    real = t < NOPE // TILE
    idx = t[:, None] * TILE + tl.arange(0, TILE)[None, :]
    x = tl.load(row + idx, mask=real[:, None], other=0.0)  # bf16 [8, 64]
    mag_max = tl.max(x.to(tl.int16, bitcast=True) & 0x7FFF, axis=1).to(tl.int32)
    bad = mag_max >= 0x7F80
    a_bits = tl.maximum(mag_max << 16, AMAX_FLOOR_BITS)  # positive floats order as their bits
    e = (a_bits >> 23) - 127 - 8 + ((a_bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e, a normal float for e in [-22, 120]
    xs = x.to(tl.float32) * inv[:, None]
    q = tl.minimum(tl.maximum(xs, -448.0), 448.0).to(tl.float8e4nv, fp_downcast_rounding="rtne")
    q = tl.where(bad[:, None], 0x7F, q.to(tl.uint8, bitcast=True))
    rec = base + off.to(tl.int64) * RECORD
    tl.store(rec + idx, q, mask=real[:, None])
    rope = tl.load(row + NOPE + tl.arange(0, ROPE)).to(tl.int16, bitcast=True)
    tl.store((rec + NOPE).to(tl.pointer_type(tl.int16)) + tl.arange(0, ROPE), rope)
    sbytes = tl.where(bad, 0xFF, e + 127)
    sc = base + block * RECORD + off.to(tl.int64) * SCALES
    tl.store(sc + t, tl.where(real, sbytes, 0).to(tl.uint8))  # 7 exponents, then the pad byte (0)


def kv_cache_write(pages: torch.Tensor, block: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
    """In place: pages uint8 [P, page_bytes] on the GPU, slots int64 [N] (page * block + offset), kv bf16
    [N, 512]."""
    if kv.dtype != torch.bfloat16 or kv.shape[-1] != HEAD_DIM:
        raise ValueError(f"the FP8 KV write takes bf16 [N, {HEAD_DIM}], got {kv.dtype} {tuple(kv.shape)}")
    if pages.dtype != torch.uint8 or pages.shape[-1] != page_bytes(block) or not pages.is_contiguous():
        raise ValueError(f"pages must be contiguous uint8 [P, {page_bytes(block)}] for block {block}")
    n = kv.shape[0]
    if n:
        _kv_write_kernel[(n,)](
            kv.contiguous(), slots.to(torch.int64).contiguous(), pages, pages.shape[-1], block,
            NOPE=NOPE_DIM, ROPE=ROPE_DIM, TILE=TILE, RECORD=RECORD_BYTES, SCALES=SCALE_BYTES,
        )  # fmt: skip
