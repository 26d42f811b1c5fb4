"""NVFP4 two-level codec: pinned to torchao's quantizer, to a float64 closed form, and to the spec's rules."""

import math

import pytest
import torch

from fp4check.references.e2m1 import e2m1_decode, unpack_e2m1
from fp4check.references.fp8 import e4m3_decode
from fp4check.references.nvfp4 import (
    DecodeScale,
    EncodeScale,
    global_decode_scale,
    global_encode_scale,
    nvfp4_dequantize,
    nvfp4_quantize,
    rounding_ties,
)


def _data(seed: int, shape=(256, 512), dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(*shape[:-1], 1, generator=g))
    return x.to(dtype)


def _torchao(x: torch.Tensor, dec: DecodeScale):
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize as ao_quantize

    scales, packed = ao_quantize(x, 16, dec.value)
    return packed, scales


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_byte_exact_with_torchao_on_float32(seed):
    x = _data(seed)
    dec = global_decode_scale(x.abs().amax())
    ours = nvfp4_quantize(x, dec)
    packed, scales = _torchao(x, dec)
    assert torch.equal(ours.scales.view(torch.uint8), scales.view(torch.uint8))
    assert torch.equal(ours.packed, packed)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bfloat16_differs_from_torchao_only_by_one_code_at_ties(seed):
    x = _data(seed, dtype=torch.bfloat16)
    dec = global_decode_scale(x.float().abs().amax())
    ours = nvfp4_quantize(x, dec)
    packed, scales = _torchao(x, dec)
    assert torch.equal(ours.scales.view(torch.uint8), scales.view(torch.uint8))
    a, b = unpack_e2m1(ours.packed), unpack_e2m1(packed)
    differ = a != b
    ties = rounding_ties(x, ours.scales, dec)
    assert bool((differ <= ties).all()), "a code differs away from a rounding tie"
    same_sign = (a & 8) == (b & 8)
    assert bool((((a & 7).int() - (b & 7).int()).abs()[differ] == 1).all()) and bool(same_sign[differ].all())


def test_tie_rule_bites():
    """The rule flags a one-code difference away from a tie, and a two-code difference at a tie."""
    x = _data(0, dtype=torch.bfloat16)
    dec = global_decode_scale(x.float().abs().amax())
    ours = nvfp4_quantize(x, dec)
    ties = rounding_ties(x, ours.scales, dec)
    assert int(ties.sum()) > 0  # bf16 data does land next to midpoints: the rule is exercised
    codes = unpack_e2m1(ours.packed)
    not_tie = (~ties & ((codes & 7) > 0) & ((codes & 7) < 7)).nonzero()[0]
    bumped = codes.clone()
    bumped[tuple(not_tie)] += 1
    assert not bool(((bumped != codes) <= ties).all())


def test_closed_form_float64_reference():
    """Every element equals the nearest e2m1 value of x*S_enc/s_b (ties to even), computed in float64."""
    x = _data(7, shape=(64, 256))
    enc = global_encode_scale(x.abs().amax())
    q = nvfp4_quantize(x, enc)
    s = e4m3_decode(q.scales).double().repeat_interleave(16, -1)
    scaled = (x.double() * enc.value.double() / s).clamp(-6, 6)
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
    dist = (scaled.abs().unsqueeze(-1) - grid).abs()
    nearest = grid[dist.argmin(-1)]  # argmin takes the first (lower, even) code on a tie: exact ties have p=0 here
    got = e2m1_decode(q.codes()).double().abs()
    assert torch.equal(got, nearest)
    # block scales: e4m3(fp32(amax_b / 6) * S_enc)
    amax_b = x.abs().reshape(64, 16, 16).amax(-1)
    want = ((amax_b / 6) * enc.value).clamp(max=448).to(torch.float8_e4m3fn)
    assert torch.equal(q.scales.view(torch.uint8), want.view(torch.uint8))


def test_round_trip_quality_and_dequant_formula():
    x = _data(3)
    q = nvfp4_quantize(x)
    back = q.dequantize()
    sqnr = 10 * math.log10(float(x.pow(2).sum() / (x - back).pow(2).sum()))
    assert sqnr > 15.0  # typical NVFP4 reconstruction ~ 19-20 dB on Gaussian rows
    dec = q.global_scale.to_decode().value
    want = e2m1_decode(q.codes()) * e4m3_decode(q.scales).repeat_interleave(16, -1) * dec
    assert torch.equal(back, want)


def test_encode_and_decode_scales_are_distinct_types():
    x = _data(1, shape=(16, 64))
    with pytest.raises(TypeError, match="EncodeScale"):
        nvfp4_quantize(x, torch.tensor(0.5))  # a bare tensor: which convention?
    with pytest.raises(TypeError):
        nvfp4_quantize(x, 0.5)
    with pytest.raises(TypeError):
        EncodeScale(torch.tensor(1.0, dtype=torch.float64))
    dec = global_decode_scale(x.abs().amax())
    enc = dec.to_encode()
    assert isinstance(enc, EncodeScale) and isinstance(enc.to_decode(), DecodeScale)
    assert enc.value.item() == pytest.approx(2688 / x.abs().amax().item(), rel=1e-6)
    # the same global amount given either way quantizes to (nearly) the same thing
    a, b = nvfp4_quantize(x, dec), nvfp4_quantize(x, enc)
    assert float((a.dequantize() - b.dequantize()).abs().max()) <= float(x.abs().max()) / 6


def test_per_expert_global_scales():
    x = _data(2, shape=(3, 32, 64))
    x[1] *= 100
    amax = x.abs().amax(dim=(1, 2))
    q = nvfp4_quantize(x, global_encode_scale(amax))
    assert q.packed.shape == (3, 32, 32) and q.scales.shape == (3, 32, 4)
    for e in range(3):
        single = nvfp4_quantize(x[e], global_encode_scale(amax[e]))
        assert torch.equal(single.packed, q.packed[e])
    assert torch.allclose(q.dequantize(), x, rtol=0.5, atol=float(amax.max()) / 8)


class TestSpecialBlocks:
    def _blocks(self):
        x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
        x[0, :16] = 0.0  # all-zero block
        x[1, :16] = 1e-9  # tiny block: its scale underflows e4m3
        x[2, 16] = math.nan  # one NaN
        x[3, 32] = math.inf  # one Inf
        return x

    def test_policy(self):
        x = self._blocks()
        q = nvfp4_quantize(x)
        raw = q.scales.view(torch.uint8)
        codes = q.codes()
        back = q.dequantize()
        assert raw[0, 0] == 0 and bool((codes[0, :16] == 0).all()) and bool((back[0, :16] == 0).all())
        assert raw[1, 0] == 0 and bool((back[1, :16] == 0).all())
        assert raw[2, 1] == 0x7F and bool(torch.isnan(back[2, 16:32]).all())
        assert raw[3, 2] == 0x7F and bool(torch.isnan(back[3, 32:48]).all())
        # the bad values stay in their blocks: every other block is finite and close to x
        finite = torch.isfinite(back)
        assert int((~finite).sum()) == 32
        ordinary = torch.ones_like(finite)
        ordinary[0, :16] = ordinary[1, :16] = ordinary[2, 16:32] = ordinary[3, 32:48] = False
        assert torch.allclose(back[ordinary], x[ordinary], atol=float(x[ordinary].abs().max()) / 6)

    def test_global_amax_ignores_non_finite(self):
        x = self._blocks()
        q = nvfp4_quantize(x)
        finite_amax = x[torch.isfinite(x)].abs().max()
        assert q.global_scale.value.item() == pytest.approx(2688 / finite_amax.item(), rel=1e-6)

    def test_all_zero_tensor(self):
        q = nvfp4_quantize(torch.zeros(2, 32))
        assert q.global_scale.value.item() == 1.0 and bool((q.dequantize() == 0).all())

    def test_scale_overflow_saturates(self):
        """An activation scale far too small (the seeds' 3977x input_scale) saturates instead of NaN."""
        x = _data(5, shape=(8, 64))
        bad = DecodeScale(global_decode_scale(x.abs().amax()).value / 3977.6)
        q = nvfp4_quantize(x, bad)
        assert int(q.scales.view(torch.uint8).max()) == 0x7E  # 448, never the NaN code
        assert bool(torch.isfinite(q.dequantize()).all())


def test_dequantize_checks_shapes():
    with pytest.raises(ValueError):
        nvfp4_dequantize(
            torch.zeros(4, 8, dtype=torch.uint8),
            torch.zeros(4, 2, dtype=torch.float8_e4m3fn),
            EncodeScale(torch.tensor(1.0)),
        )
