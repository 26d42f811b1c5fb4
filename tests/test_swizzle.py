"""128x4 scale swizzle pinned to torch's to_blocked/from_blocked helpers and to the spec's closed form."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4check.references.swizzle import swizzle_128x4, swizzle_offset, swizzled_shape, unswizzle_128x4


@pytest.mark.parametrize("rows,cols", [(128, 4), (300, 7), (1, 1), (129, 5), (256, 448)])
def test_matches_torch_to_blocked_and_from_blocked(rows, cols):
    from torch.testing._internal.common_quantized import from_blocked, to_blocked

    s = torch.randint(0, 255, (rows, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(rows))
    sw = swizzle_128x4(s)
    assert torch.equal(sw, to_blocked(s))
    if rows * cols <= 300 * 7:  # from_blocked is a slow loop reference
        fake_data = torch.empty(rows, cols * 16)
        assert torch.equal(from_blocked(fake_data, sw, 16), s)
    assert torch.equal(unswizzle_128x4(sw, rows, cols), s)


@given(st.integers(1, 300), st.integers(1, 20))
@settings(max_examples=60, deadline=None)
def test_closed_form_offsets_and_zero_padding(rows, cols):
    s = torch.arange(1, rows * cols + 1, dtype=torch.int64).reshape(rows, cols)
    sw = swizzle_128x4(s)
    rp, cp = swizzled_shape(rows, cols)
    assert sw.numel() == rp * cp
    offsets = torch.tensor([[swizzle_offset(r, c, cols) for c in range(cols)] for r in range(rows)])
    assert torch.equal(sw[offsets], s)
    mask = torch.ones(rp * cp, dtype=torch.bool)
    mask[offsets.flatten()] = False
    assert bool((sw[mask] == 0).all())  # padding is zeros
    assert torch.equal(unswizzle_128x4(sw, rows, cols), s)


def test_torchao_agrees_and_dtypes_kept():
    from torchao.prototype.mx_formats.utils import to_blocked as ao_to_blocked

    s = torch.randint(0, 127, (200, 9), dtype=torch.uint8).view(torch.float8_e4m3fn)
    sw = swizzle_128x4(s)
    assert sw.dtype == torch.float8_e4m3fn
    assert torch.equal(sw.view(torch.uint8), ao_to_blocked(s.view(torch.uint8)).flatten())


def test_batched_per_expert():
    s = torch.randint(0, 255, (3, 130, 6), dtype=torch.uint8)
    sw = swizzle_128x4(s)
    for e in range(3):
        assert torch.equal(sw[e], swizzle_128x4(s[e]))
    assert torch.equal(unswizzle_128x4(sw, 130, 6), s)


def test_wrong_size_refused():
    with pytest.raises(ValueError):
        unswizzle_128x4(torch.zeros(100, dtype=torch.uint8), 128, 4)
