"""e4m3, e8m0, FP8 block weights and DeepSeek activation quantization, pinned to closed forms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4check.references.fp8 import (
    act_dequant_fp8,
    act_quant_fp8,
    ceil_log2,
    e4m3_decode,
    e4m3_encode,
    e8m0_bytes,
    e8m0_decode,
    e8m0_from_exponent,
    fp8_block_dequantize,
    fp8_block_quantize,
)


def e4m3_closed_form(byte: int) -> float:
    """Value of an e4m3fn byte from its bits: sign, 4 exponent bits (bias 7), 3 mantissa bits."""
    s, e, m = byte >> 7, (byte >> 3) & 0xF, byte & 7
    if e == 0xF and m == 7:
        return math.nan
    v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if s else v


ALL_BYTES = list(range(256))
FINITE = [b for b in ALL_BYTES if not math.isnan(e4m3_closed_form(b))]


def test_decode_all_256_codes_against_closed_form():
    got = e4m3_decode(torch.tensor(ALL_BYTES, dtype=torch.uint8)).tolist()
    for b, v in zip(ALL_BYTES, got, strict=True):
        want = e4m3_closed_form(b)
        assert (math.isnan(v) and math.isnan(want)) or v == want, b


def test_encode_round_trips_every_finite_code():
    values = torch.tensor([e4m3_closed_form(b) for b in FINITE], dtype=torch.float32)
    assert e4m3_encode(values).view(torch.uint8).tolist() == FINITE


def test_overflow_saturates_whatever_the_torch_version():
    x = torch.tensor([464.0, 465.0, 480.0, 1e6, math.inf, -math.inf, -1e6])
    assert e4m3_decode(e4m3_encode(x)).tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]
    assert e4m3_encode(torch.tensor([math.nan])).view(torch.uint8).item() == 0x7F


def test_midpoints_round_to_even():
    positives = sorted({e4m3_closed_form(b) for b in FINITE if e4m3_closed_form(b) >= 0})
    lo, hi = torch.tensor(positives[:-1], dtype=torch.float64), torch.tensor(positives[1:], dtype=torch.float64)
    mid = ((lo + hi) / 2).to(torch.float32)
    assert torch.equal(mid.to(torch.float64), (lo + hi) / 2)  # midpoints are exact in float32
    got = e4m3_decode(e4m3_encode(mid)).to(torch.float64)
    lo_bytes = e4m3_encode(lo.to(torch.float32)).view(torch.uint8)
    want = torch.where(lo_bytes % 2 == 0, lo, hi)
    assert torch.equal(got, want)


def test_e8m0_bytes_not_numbers():
    raw = torch.tensor([120, 127, 134, 255], dtype=torch.uint8)
    values = e8m0_decode(raw)
    assert values[:3].tolist() == [2.0**-7, 1.0, 2.0**7] and math.isnan(values[3])
    assert torch.allclose(e8m0_decode(raw.view(torch.float8_e8m0fnu)), values, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(TypeError, match="120.0"):
        e8m0_decode(torch.tensor([120.0]))  # the vllm#43416 bug: the byte already read as a number
    with pytest.raises(TypeError):
        e8m0_bytes(torch.tensor([127], dtype=torch.int32))
    assert e8m0_from_exponent(torch.tensor([-7, 0, 7])).tolist() == [120, 127, 134]


@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_ceil_log2_exact(v):
    e = int(ceil_log2(torch.tensor([v], dtype=torch.float64)).item())
    assert 2.0 ** (e - 1) < v <= 2.0**e


def test_act_quant_fp8_power_of_two_scales_and_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 512, generator=g) * torch.exp(torch.randn(8, 1, generator=g))
    x[0, :128] = 0  # an all-zero block takes the 1e-4 amax floor
    for block in (128, 64):
        q, s = act_quant_fp8(x, block)
        assert s.shape == (8, 512 // block) and s.dtype == torch.uint8
        amax = x.abs().reshape(8, -1, block).amax(-1).clamp(min=1e-4)
        scale = e8m0_decode(s)
        assert bool(((amax / 448 <= scale) & (scale < 2 * amax / 448)).all())  # smallest power of two that fits
        back = act_dequant_fp8(q, s, block)
        # e4m3: half an ulp is <= 1/16 of the value among normals, 2^-10 * scale among subnormals
        bound = x.abs() / 16 + scale.repeat_interleave(block, -1) * 2.0**-10
        assert bool((back - x).abs().le(bound).all())
        assert bool((back[0, :128] == 0).all())


def test_act_quant_fp8_nan_block_marked_with_nan_scale():
    x = torch.ones(1, 256)
    x[0, 3] = math.nan
    q, s = act_quant_fp8(x, 128)
    assert s.tolist() == [[255, 127 - 8]]  # block 0 NaN; block 1 amax 1 -> 2^ceil(log2(1/448)) = 2^-8
    assert math.isnan(act_dequant_fp8(q, s, 128)[0, 0])


@pytest.mark.parametrize("scale_fmt", ["ue8m0", "fp32"])
def test_fp8_block_weights(scale_fmt):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300, 200, generator=g) * 0.05
    q, s = fp8_block_quantize(w, scale_fmt)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 2)
    back = fp8_block_dequantize(q, s.view(torch.float8_e8m0fnu) if scale_fmt == "ue8m0" else s)
    assert back.shape == w.shape
    # closed form: each tile is e4m3 value * its tile scale
    scale = e8m0_decode(s) if scale_fmt == "ue8m0" else s
    tile_scale = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200]
    assert bool((back - w).abs().le(w.abs() / 16 + tile_scale * 2.0**-10).all())
    assert back[130, 150].item() == e4m3_decode(q[130:131, 150:151]).item() * scale[1, 1].item()


def test_fp8_block_dequant_refuses_mismatched_scale():
    with pytest.raises(ValueError):
        fp8_block_dequantize(torch.zeros(256, 256, dtype=torch.float8_e4m3fn), torch.zeros(1, 2, dtype=torch.uint8))
