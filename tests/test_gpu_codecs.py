"""The codecs are pure torch: on a CUDA device they give the same bytes as on the CPU (skipped without a GPU)."""

import pytest
import torch

from fp4check.references.fp8 import act_quant_fp8, fp8_block_quantize
from fp4check.references.mxfp4 import mxfp4_quantize
from fp4check.references.nvfp4 import global_decode_scale, global_encode_scale, nvfp4_quantize
from fp4check.references.swizzle import swizzle_128x4, unswizzle_128x4

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def _x(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 1024, generator=g) * torch.exp(torch.randn(384, 1, generator=g))
    x[0, :16] = 0
    x[1, 5] = float("nan")
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("convention", ["encode", "decode"])
def test_nvfp4_same_bytes_on_gpu(dtype, convention):
    x = _x(dtype)
    amax = x.float().nan_to_num().abs().amax()
    scale = global_encode_scale(amax) if convention == "encode" else global_decode_scale(amax)
    cpu = nvfp4_quantize(x, scale)
    gpu = nvfp4_quantize(x.cuda(), type(scale)(scale.value.cuda()))
    assert torch.equal(gpu.packed.cpu(), cpu.packed)
    assert torch.equal(gpu.scales.view(torch.uint8).cpu(), cpu.scales.view(torch.uint8))
    back = gpu.dequantize().cpu()
    assert torch.allclose(back, cpu.dequantize(), rtol=0, atol=0, equal_nan=True)


def test_fp8_mxfp4_swizzle_same_on_gpu():
    x = _x()
    for fn in (
        lambda t: act_quant_fp8(t, 128),
        lambda t: mxfp4_quantize(t),
        lambda t: fp8_block_quantize(t.nan_to_num()),
    ):
        a, b = fn(x), fn(x.cuda())
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u.view(torch.uint8), v.cpu().view(torch.uint8))
    s = torch.randint(0, 255, (300, 7), dtype=torch.uint8)
    sw = swizzle_128x4(s.cuda())
    assert torch.equal(sw.cpu(), swizzle_128x4(s)) and torch.equal(unswizzle_128x4(sw, 300, 7).cpu(), s)
