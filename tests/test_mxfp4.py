import math

import torch

from fp4check.references.e2m1 import e2m1_decode, unpack_e2m1
from fp4check.references.fp8 import e8m0_decode
from fp4check.references.mxfp4 import mxfp4_dequantize, mxfp4_quantize


def test_mxfp4_scale_rule_never_saturates_and_decodes_by_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=g) * torch.exp(2 * torch.randn(16, 1, generator=g))
    packed, scale = mxfp4_quantize(x)
    assert packed.shape == (16, 64) and scale.shape == (16, 4)
    s = e8m0_decode(scale)
    amax = x.abs().reshape(16, 4, 32).amax(-1)
    assert bool((amax <= 6 * s).all()) and bool((amax > 3 * s).all())  # 2^ceil(log2(amax/6))
    back = mxfp4_dequantize(packed, scale)
    want = (e2m1_decode(unpack_e2m1(packed)).reshape(16, 4, 32) * s.unsqueeze(-1)).reshape(16, 128)
    assert torch.equal(back, want)
    # error bounded by half the coarsest e2m1 step (4 -> 6) times the block scale
    err = (back - x).abs().reshape(16, 4, 32).amax(-1)
    assert bool((err <= s).all())


def test_mxfp4_int8_storage_and_nan_block():
    x = torch.ones(1, 64)
    x[0, 40] = math.nan
    packed, scale = mxfp4_quantize(x)
    assert scale[0, 1].item() == 255
    back = mxfp4_dequantize(packed.view(torch.int8), scale.view(torch.float8_e8m0fnu))
    assert bool((back[0, :32] == 1).all()) and bool(torch.isnan(back[0, 32:]).all())
