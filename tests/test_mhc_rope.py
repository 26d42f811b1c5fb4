"""mHC and RoPE references: closed forms, and parity with transformers' deepseek_v4 modules (an independent port)."""

import math

import pytest
import torch

from fp4check.config import RopeConfig, parse_config
from fp4check.references.mhc import hc_head, mhc_post, mhc_pre, sinkhorn
from fp4check.references.rope import apply_rope, rope_angles, rope_frequencies
from fp4check.synth.presets import preset_config

CFG = parse_config(preset_config("tiny"))
G = torch.Generator().manual_seed(0)


def _hc_params(d=CFG.hidden_size, n=4):
    mix = (2 + n) * n
    return (
        torch.randn(mix, n * d, generator=G) / math.sqrt(n * d),
        0.5 * torch.randn(mix, generator=G),
        0.5 + 0.1 * torch.rand(3, generator=G),
    )


def test_sinkhorn_is_doubly_stochastic():
    c = sinkhorn(torch.randn(5, 4, 4, generator=G), 20, 1e-6)
    assert torch.allclose(c.sum(-2), torch.ones(5, 4), atol=1e-5)  # the last step normalizes columns exactly
    assert torch.allclose(c.sum(-1), torch.ones(5, 4), atol=2e-2)  # rows approximately, after 19 rounds


def test_mhc_post_consumes_comb_transposed():
    x = torch.randn(1, 4, 3, generator=G)
    comb = torch.zeros(1, 4, 4)
    comb[0, 0, 1] = 1.0  # stream 0 flows into stream 1
    out = mhc_post(x, torch.zeros(1, 3), torch.zeros(1, 4), comb)
    assert torch.allclose(out[0, 1], x[0, 0]) and bool((out[0, 0] == 0).all())


def test_rope_rotates_pairs_and_inverse_undoes_it():
    x = torch.randn(6, 2, 512, generator=G)
    ang = rope_angles(torch.arange(6), rope_frequencies(CFG.rope_compress, 64))
    y = apply_rope(x, ang, 64)
    assert torch.equal(y[..., :448], x[..., :448])
    assert torch.allclose(
        y[..., 448:].reshape(6, 2, 32, 2).norm(dim=-1), x[..., 448:].reshape(6, 2, 32, 2).norm(dim=-1), atol=1e-5
    )
    assert torch.allclose(apply_rope(y, ang, 64, inverse=True), x, atol=1e-5)
    # pair 0 at position 1 by angle f_0 = 1: (a, b) -> (a cos 1 - b sin 1, a sin 1 + b cos 1)
    a, b = x[1, 0, 448], x[1, 0, 449]
    f0 = float(ang[1, 0])
    assert torch.allclose(y[1, 0, 448], a * math.cos(f0) - b * math.sin(f0), atol=1e-6)
    # relative positions only: q.k of two rotated vectors depends on their distance, not on where they are
    freqs = rope_frequencies(CFG.rope_compress, 64)
    q, k = torch.randn(1, 1, 64, generator=G), torch.randn(1, 1, 64, generator=G)

    def rotated_dot(p_q: int, p_k: int) -> float:
        rq = apply_rope(q, rope_angles(torch.tensor([p_q]), freqs), 64)
        rk = apply_rope(k, rope_angles(torch.tensor([p_k]), freqs), 64)
        return float((rq * rk).sum())

    assert math.isclose(rotated_dot(3, 0), rotated_dot(103, 100), rel_tol=1e-4)


def test_yarn_only_on_compressed_layers():
    base = rope_frequencies(RopeConfig(theta=160000.0, yarn=False), 64)
    yarn = rope_frequencies(CFG.rope_compress, 64)
    assert torch.allclose(yarn[:2], base[:2])  # fast (high-frequency) pairs keep their frequency
    assert torch.allclose(yarn[-2:], base[-2:] / 16)  # slow pairs are interpolated by the factor
    swa = CFG.rope_for_layer(3)
    assert not swa.yarn and swa.theta == 10000


# --- parity with transformers' deepseek_v4 (an independent implementation) -----------------------------------

transformers = pytest.importorskip("transformers")


def _hf_config():
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config

    rs = {
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 65536,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    return DeepseekV4Config(
        hidden_size=CFG.hidden_size,
        num_hidden_layers=4,
        num_attention_heads=2,
        head_dim=512,
        q_lora_rank=128,
        vocab_size=1024,
        n_routed_experts=16,
        moe_intermediate_size=128,
        o_groups=2,
        o_lora_rank=64,
        compress_ratios=[128, 4, 128, 0, 0],
        num_hash_layers=1,
        qk_rope_head_dim=64,
        rope_parameters=rs,
        rope_theta=10000.0,
        compress_rope_theta=160000.0,
    )


def test_mhc_pre_and_head_match_transformers():
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection, DeepseekV4HyperHead

    hf_cfg = _hf_config()
    fn, base, scale = _hc_params()
    hc = DeepseekV4HyperConnection(hf_cfg)
    with torch.no_grad():
        hc.fn.copy_(fn)
        hc.base.copy_(base)
        hc.scale.copy_(scale)
    x = torch.randn(7, 4, CFG.hidden_size, generator=G).to(torch.bfloat16)
    post, comb, collapsed = hc(x.unsqueeze(0))
    ours = mhc_pre(x, fn, base, scale, 4, 20, 1e-6, 1e-6)
    assert torch.allclose(ours["post"], post[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours["comb"], comb[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours["input"].float(), collapsed[0].float(), rtol=1e-2, atol=1e-2)
    head = DeepseekV4HyperHead(hf_cfg)
    hfn, hbase, hscale = (
        torch.randn(4, 4 * CFG.hidden_size, generator=G) * 0.02,
        torch.randn(4, generator=G),
        torch.rand(1),
    )
    with torch.no_grad():
        head.hc_fn.copy_(hfn)
        head.hc_base.copy_(hbase)
        head.hc_scale.copy_(hscale)
    assert torch.allclose(
        hc_head(x, hfn, hbase, hscale, 1e-6, 1e-6).float(), head(x.unsqueeze(0))[0].float(), rtol=1e-2, atol=1e-2
    )


def test_rope_matches_transformers():
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding, apply_rotary_pos_emb

    hf_cfg = _hf_config()
    emb = DeepseekV4RotaryEmbedding(hf_cfg)
    for label, rope in (("compress", CFG.rope_compress), ("main", CFG.rope_main)):
        freqs = rope_frequencies(rope, 64)
        assert torch.allclose(freqs, getattr(emb, f"{label}_inv_freq").float(), rtol=1e-5), label
        pos = torch.arange(0, 300, 37)
        x = torch.randn(1, 2, len(pos), 512, generator=G)
        cos, sin = torch.cos(rope_angles(pos, freqs)), torch.sin(rope_angles(pos, freqs))
        hf = apply_rotary_pos_emb(x, cos.unsqueeze(0), sin.unsqueeze(0))
        ours = apply_rope(x[0].transpose(0, 1), rope_angles(pos, freqs), 64).transpose(0, 1)
        assert torch.allclose(ours, hf[0], atol=1e-5), label
