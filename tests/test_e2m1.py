"""E2M1 codec pinned to the closed form and to torch's and torchao's independent implementations."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4check.references.e2m1 import (
    E2M1_AS_E4M3_GAIN,
    E2M1_VALUES,
    e2m1_as_e4m3,
    e2m1_decode,
    e2m1_encode,
    pack_e2m1,
    unpack_e2m1,
)

SPEC_INPUTS = [
    0,
    -0.0,
    1e-30,
    -1e-30,
    0.25,
    0.2500001,
    0.75,
    1.25,
    1.75,
    2.5,
    3.5,
    5,
    5.0001,
    6,
    7,
    100,
    math.inf,
    -math.inf,
    math.nan,
    -0.25,
    -0.2500001,
    -5,
    -7,
]


def rne_closed_form(v: float) -> int:
    """Nearest e2m1 magnitude by exhaustive search in float64, ties to the even code."""
    if math.isnan(v):
        return 7
    sign = 8 if math.copysign(1.0, v) < 0 else 0
    a = min(abs(v), 6.0)
    best = min(range(8), key=lambda c: (abs(E2M1_VALUES[c] - a), c % 2))
    return best | sign


def test_spec_table_rounding_and_saturation():
    codes = e2m1_encode(torch.tensor(SPEC_INPUTS, dtype=torch.float32)).tolist()
    # spec nvfp4.md §1.5, torch/torchao row, except our documented NaN policy (+6 = code 7, torch gives 3)
    expected = [0, 8, 0, 8, 0, 1, 2, 2, 4, 4, 6, 6, 7, 7, 7, 7, 7, 15, 7, 8, 9, 14, 15]
    assert codes == expected


@given(st.floats(allow_nan=False, width=32, min_value=-100, max_value=100))
@settings(max_examples=500, deadline=None)
def test_encode_matches_closed_form(v):
    assert e2m1_encode(torch.tensor([v], dtype=torch.float32)).item() == rne_closed_form(v)


@given(st.lists(st.floats(allow_nan=False, width=32, min_value=-50, max_value=50), min_size=2, max_size=64))
@settings(max_examples=200, deadline=None)
def test_monotone(values):
    x = torch.tensor(sorted(values), dtype=torch.float32)
    decoded = e2m1_decode(e2m1_encode(x))
    assert bool((decoded[1:] >= decoded[:-1]).all())


def test_grid_round_trip_and_decode_table():
    codes = torch.arange(16, dtype=torch.uint8)
    values = e2m1_decode(codes)
    assert values[:8].tolist() == list(E2M1_VALUES)
    assert values[8:].tolist() == [-v for v in E2M1_VALUES]
    assert torch.equal(e2m1_encode(values), codes)  # -0.0 -> 8 keeps the sign


def test_divisor_decides_ties_exactly():
    # 0.75 * 3.0 = 2.25: x / d is exactly the tie 0.75 -> even code 2 (1.0); one ulp above -> still 2; below -> 1
    d = torch.tensor(3.0)
    x = torch.tensor([2.25, math.nextafter(2.25, 0), math.nextafter(2.25, 10)], dtype=torch.float64)
    assert e2m1_encode(x, divisor=d).tolist() == [2, 1, 2]


def test_pack_low_nibble_first_and_unpack_inverse():
    codes = torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)
    packed = pack_e2m1(codes)
    assert packed.tolist() == [[0x21, 0x8F]]
    assert torch.equal(unpack_e2m1(packed), codes)
    assert torch.equal(unpack_e2m1(packed.view(torch.int8)), codes)


def test_pack_matches_torch_pack_uint4():
    from torch.testing._internal.common_quantized import pack_uint4

    codes = torch.randint(0, 16, (8, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pack_e2m1(codes), pack_uint4(codes))


@pytest.mark.parametrize("seed", [0, 1])
def test_encode_matches_torch_and_torchao_on_finite_float32(seed):
    from torch.testing._internal.common_quantized import _f32_to_floatx_unpacked
    from torchao.prototype.mx_formats.kernels import f32_to_f4_unpacked

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, generator=g) * 4
    x[:8] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.0])
    ours = e2m1_encode(x)
    assert torch.equal(ours, _f32_to_floatx_unpacked(x, 2, 1))
    assert torch.equal(ours, f32_to_f4_unpacked(x))


def test_bad_codes_refused():
    with pytest.raises(TypeError):
        e2m1_decode(torch.tensor([1], dtype=torch.int32))
    with pytest.raises(ValueError):
        e2m1_decode(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(ValueError):
        pack_e2m1(torch.zeros(3, dtype=torch.uint8))


def test_e2m1_bits_as_e4m3_read_the_e2m1_values_times_2_to_minus_6():
    """Every byte: its two nibbles re-placed as e4m3 bytes, decoded by torch's float8_e4m3fn (an independent
    decoder), equal the e2m1 table's values x 2^-6, signs of zero included; and the SM90 GEMM's PTX, which
    does it to a 32-bit word of 4 bytes with the masks below, gives the same bytes."""
    packed = torch.arange(256, dtype=torch.uint8)
    lo, hi = e2m1_as_e4m3(packed)
    for got, codes in ((lo, packed & 0xF), (hi, packed >> 4)):
        value = got.view(torch.float8_e4m3fn).float()
        want = e2m1_decode(codes) * E2M1_AS_E4M3_GAIN
        assert torch.equal(value, want) and torch.equal(value.signbit(), want.signbit())
    words = packed.view(64, 4).to(torch.int64)
    word = words[:, 0] | words[:, 1] << 8 | words[:, 2] << 16 | words[:, 3] << 24
    ptx_lo = ((word << 2) & 0x1C1C1C1C) | ((word << 4) & 0x80808080)  # shl, and, shl, and, or
    ptx_hi = ((word >> 2) & 0x1C1C1C1C) | (word & 0x80808080)  # shr, and, and, or
    for ptx, want in ((ptx_lo, lo), (ptx_hi, hi)):
        assert torch.equal(torch.stack([(ptx >> (8 * i)) & 0xFF for i in range(4)], -1).flatten(), want.long())
