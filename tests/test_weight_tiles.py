"""The triton GEMM's weight layout (kernels/triton/weight_tiles.py) and the harness's prepare/restore of a
backend's weights: pure torch, so on the CPU."""

from dataclasses import dataclass

import pytest
import torch

from fp4check.kernels.contract import GroupedNVFP4
from fp4check.kernels.triton import weight_tiles
from fp4check.moe_check import backend_weights
from fp4check.references.nvfp4 import DecodeScale


def _weights(e=3, n=128, k=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8, generator=g)
    scales = torch.randint(0, 256, (e, n, k // 16), dtype=torch.uint8, generator=g).view(torch.float8_e4m3fn)
    return packed, scales


def test_tile_places_every_byte_where_the_gemm_reads_it():
    """The kernel's address of (expert, row n, K step j, byte c): per 64-row group a [K/128, 64, 64] block
    of codes and a [K/128, 64, 8] block of scales (written out here apart from the module's view/permute)."""
    packed, scales = _weights()
    e, n, half = packed.shape
    k = half * 2
    tp, ts = packed.clone(), scales.clone()
    weight_tiles.tile_(tp, ts)
    steps = k // 128
    idx = torch.arange(n)[:, None, None], torch.arange(steps)[None, :, None], torch.arange(64)[None, None, :]
    rows, step, col = idx
    code_at = (rows // 64) * steps * 4096 + step * 4096 + (rows % 64) * 64 + col
    assert torch.equal(tp[1].flatten()[code_at], packed[1].view(n, steps, 64))
    rows, step, col = torch.arange(n)[:, None, None], torch.arange(steps)[None, :, None], torch.arange(8)[None, None, :]
    scale_at = (rows // 64) * steps * 512 + step * 512 + (rows % 64) * 8 + col
    assert torch.equal(ts.view(torch.uint8)[2].flatten()[scale_at], scales.view(torch.uint8)[2].view(n, steps, 8))
    assert not torch.equal(tp, packed)  # it did move bytes


def test_untile_restores_every_byte_across_chunks(monkeypatch):
    packed, scales = _weights(e=5)
    monkeypatch.setattr(weight_tiles, "CHUNK_BYTES", packed[0].numel() * 2)  # 2 experts a chunk, 3 chunks
    tp, ts = packed.clone(), scales.clone()
    weight_tiles.tile_(tp, ts)
    whole_p, whole_s = packed.clone(), scales.clone()
    monkeypatch.setattr(weight_tiles, "CHUNK_BYTES", 1 << 30)
    weight_tiles.tile_(whole_p, whole_s)
    assert torch.equal(tp, whole_p) and torch.equal(ts.view(torch.uint8), whole_s.view(torch.uint8))
    weight_tiles.untile_(tp, ts)
    assert torch.equal(tp, packed) and torch.equal(ts.view(torch.uint8), scales.view(torch.uint8))


@pytest.mark.parametrize("n,k,ok", [(128, 256, True), (96, 256, False), (128, 200, False)])
def test_tileable_shapes(n, k, ok):
    assert weight_tiles.tileable(n, k) is ok


@dataclass
class _MoE:  # the two fields backend_weights touches
    w13: GroupedNVFP4
    w2: GroupedNVFP4


def _fake_moe_weights() -> _MoE:
    one = DecodeScale(torch.ones(3, 1))
    return _MoE(GroupedNVFP4(*_weights(seed=1), one), GroupedNVFP4(*_weights(n=384, k=128, seed=2), one))


class _InPlace:
    """A backend whose prepare reorders the caller's tensors in place."""

    name = "in-place"

    def __init__(self):
        self.restored = 0

    def prepare_weights(self, b):
        weight_tiles.tile_(b.packed, b.scales)
        return GroupedNVFP4(b.packed, b.scales, b.global_scale, "tiled")

    def restore_weights(self, b):
        weight_tiles.untile_(b.packed, b.scales)
        self.restored += 1


def test_backend_weights_hands_over_the_prepared_layout_and_restores_it():
    w = _fake_moe_weights()
    before = (w.w13.packed.clone(), w.w2.scales.view(torch.uint8).clone())
    be = _InPlace()
    with backend_weights(be, w) as bw:
        assert bw.w13.layout == bw.w2.layout == "tiled" and w.w13.layout == "rows"
        assert not torch.equal(w.w13.packed, before[0])  # in place: the caller's bytes moved meanwhile
    assert be.restored == 2
    assert torch.equal(w.w13.packed, before[0]) and torch.equal(w.w2.scales.view(torch.uint8), before[1])


def test_backend_weights_restores_after_an_error_and_passes_plain_backends_through():
    w = _fake_moe_weights()
    before = w.w2.packed.clone()
    be = _InPlace()
    with pytest.raises(RuntimeError, match="kernel died"):
        with backend_weights(be, w):
            raise RuntimeError("kernel died")
    assert be.restored == 2 and torch.equal(w.w2.packed, before)
    with backend_weights(object(), w) as same:
        assert same is w
