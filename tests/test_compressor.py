"""Compressor references: closed forms on small cases and parity with transformers' HCA/CSA compressors."""

import pytest
import torch
from test_mhc_rope import CFG, _hf_config

from fp4check.references.compressor import compress, pool_csa, pool_hca, visible_entries
from fp4check.references.rope import rope_frequencies

G = torch.Generator().manual_seed(1)


def test_hca_pools_each_channel_with_its_own_softmax():
    a = torch.tensor([[[1.0, 10.0], [3.0, 20.0]]])  # one window, 2 positions, 2 channels
    z = torch.tensor([[[0.0, 5.0], [0.0, -5.0]]])
    out = pool_hca(a, z)
    assert torch.allclose(out[0, 0], torch.tensor(2.0))  # equal gates: the mean
    w = torch.softmax(torch.tensor([5.0, -5.0]), 0)
    assert torch.allclose(out[0, 1], w[0] * 10 + w[1] * 20)


def test_csa_overlaps_the_previous_window():
    ratio, d = 4, 3
    a = torch.randn(3, ratio, 2 * d, generator=G)
    z = torch.zeros(3, ratio, 2 * d)  # uniform gates: plain means
    out = pool_csa(a, z)
    assert torch.allclose(out[0], a[0, :, d:].mean(0))  # window 0: only its own Cb (Ca slots weigh 0)
    assert torch.allclose(out[2], torch.cat([a[1, :, :d], a[2, :, d:]]).mean(0))


def test_visibility():
    assert [visible_entries(t, 4) for t in (0, 2, 3, 4, 7, 8)] == [0, 0, 1, 1, 2, 2]
    assert visible_entries(127, 128) == 1 and visible_entries(126, 128) == 0


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("ratio", [4, 128])
def test_matches_transformers(ratio):
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4CSACompressor, DeepseekV4HCACompressor

    hf_cfg = _hf_config()
    module = (DeepseekV4CSACompressor if ratio == 4 else DeepseekV4HCACompressor)(hf_cfg)
    c = 2 if ratio == 4 else 1
    d, hd = CFG.hidden_size, 512
    wkv, wgate = torch.randn(c * hd, d, generator=G) / 16, torch.randn(c * hd, d, generator=G) / 16
    ape, norm = torch.randn(ratio, c * hd, generator=G) * 0.1, 1 + 0.1 * torch.randn(hd, generator=G)
    with torch.no_grad():
        module.kv_proj.weight.copy_(wkv)
        module.gate_proj.weight.copy_(wgate)
        module.position_bias.copy_(ape)
        module.kv_norm.weight.copy_(norm)
    t = 3 * ratio + 1
    x = torch.randn(1, t, d, generator=G)
    q_res = torch.randn(1, t, hf_cfg.q_lora_rank, generator=G)
    hf = module(x, q_res, torch.arange(t).unsqueeze(0), None, 0)[0][0, 0]
    ours = compress(x[0], wkv, wgate, ape, norm, ratio, rope_frequencies(CFG.rope_compress, 64), 64, 1e-6)["entries"]
    assert ours.shape == hf.shape == (3, hd)
    assert torch.allclose(ours, hf, rtol=1e-4, atol=1e-4)
