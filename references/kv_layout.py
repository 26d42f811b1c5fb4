"""The FP8 KV-cache record of DeepSeek-V4 (shared/spec/deepseek_v4.md §2.13; FlashMLA MODEL1_FP8Sparse).

One token (or compressed entry) of d = 512 channels takes 584 bytes: a 576-byte record, 448 e4m3 bytes of
the no-rope channels then the 64 rope channels as bf16 (128 bytes, little-endian), and 8 scale bytes,
7 ue8m0 exponents (one per 64 no-rope channels, scale = 2^ceil(log2(max(amax, 1e-4) / 448))) and a pad
byte. Within a page of `block` tokens all records come first, then the [block, 8] scale area; the page
is padded to a multiple of 576 bytes.

This module is the codec of one record (pure functions); kernels.emulated.kv_cache places records in
pages through block tables.
"""

from __future__ import annotations

import torch

from fp4check.references.fp8 import act_dequant_fp8, act_quant_fp8

HEAD_DIM = 512
ROPE_DIM = 64
NOPE_DIM = HEAD_DIM - ROPE_DIM  # 448
TILE = 64
N_SCALES = NOPE_DIM // TILE  # 7
RECORD_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 576
SCALE_BYTES = N_SCALES + 1  # 8
TOKEN_BYTES = RECORD_BYTES + SCALE_BYTES  # 584
PAGE_ALIGN = RECORD_BYTES


def page_bytes(block: int) -> int:
    """Bytes of one page of `block` tokens: records, then the scale area, padded to a multiple of 576."""
    return -(-block * TOKEN_BYTES // PAGE_ALIGN) * PAGE_ALIGN


def encode_kv(kv: torch.Tensor) -> torch.Tensor:
    """bf16 [N, 512] -> uint8 [N, 584]: the record (e4m3 no-rope, bf16 rope) then 7 scale bytes and a zero pad."""
    if kv.dtype != torch.bfloat16 or kv.shape[-1] != HEAD_DIM:
        raise ValueError(f"the FP8 KV record takes bf16 [N, {HEAD_DIM}], got {kv.dtype} {tuple(kv.shape)}")
    n = kv.shape[0]
    q, scales = act_quant_fp8(kv[:, :NOPE_DIM], TILE)
    rope = kv[:, NOPE_DIM:].contiguous().view(torch.uint8)  # [N, 128], little-endian bf16
    pad = torch.zeros(n, 1, dtype=torch.uint8, device=kv.device)
    return torch.cat([q.view(torch.uint8), rope, scales.view(torch.uint8), pad], dim=1)


def decode_kv(rows: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 584] -> bf16 [N, 512]: e4m3 times 2^(e - 127) for the no-rope channels, the rope bf16 as stored."""
    q = rows[:, :NOPE_DIM].contiguous().view(torch.float8_e4m3fn)
    rope = rows[:, NOPE_DIM:RECORD_BYTES].contiguous().view(torch.bfloat16)
    scales = rows[:, RECORD_BYTES : RECORD_BYTES + N_SCALES].contiguous()
    return torch.cat([act_dequant_fp8(q, scales, TILE).to(torch.bfloat16), rope], dim=1)
