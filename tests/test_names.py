"""transformers' deepseek_v4 names <-> DeepSeek-native names."""

import pytest

from fp4check.config import parse_config
from fp4check.layout import model_families
from fp4check.names import fused_expert_name, to_native, to_transformers
from fp4check.synth.presets import preset_config

# Pairs taken from transformers' conversion rules for deepseek_v4 (conversion_mapping.py) and its modules.
KNOWN = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("head.weight", "lm_head.weight"),
    ("hc_head_fn", "model.hc_head.hc_fn"),
    ("layers.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
    ("layers.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
    ("layers.0.hc_attn_fn", "model.layers.0.attn_hc.fn"),
    ("layers.0.attn.attn_sink", "model.layers.0.self_attn.sinks"),
    ("layers.0.attn.wq_a.weight", "model.layers.0.self_attn.q_a_proj.weight"),
    ("layers.0.attn.q_norm.weight", "model.layers.0.self_attn.q_a_norm.weight"),
    ("layers.0.attn.wkv.weight", "model.layers.0.self_attn.kv_proj.weight"),
    ("layers.0.attn.wo_a.scale", "model.layers.0.self_attn.o_a_proj.weight_scale_inv"),
    ("layers.1.attn.compressor.ape", "model.layers.1.self_attn.compressor.position_bias"),
    ("layers.1.attn.compressor.norm.weight", "model.layers.1.self_attn.compressor.kv_norm.weight"),
    ("layers.1.attn.indexer.wq_b.weight", "model.layers.1.self_attn.compressor.indexer.q_b_proj.weight"),
    (
        "layers.1.attn.indexer.weights_proj.weight",
        "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight",
    ),
    ("layers.1.attn.indexer.compressor.wgate.weight", "model.layers.1.self_attn.compressor.indexer.gate_proj.weight"),
    ("layers.3.ffn.gate.bias", "model.layers.3.mlp.gate.e_score_correction_bias"),
    ("layers.0.ffn.gate.tid2eid", "model.layers.0.mlp.gate.tid2eid"),
    ("layers.3.ffn.shared_experts.w3.weight", "model.layers.3.mlp.shared_experts.up_proj.weight"),
]


@pytest.mark.parametrize("native,hf", KNOWN)
def test_known_pairs(native, hf):
    assert to_transformers(native) == hf
    assert to_native(hf) == [(native, None)]


def test_every_tiny_name_round_trips():
    cfg = parse_config(preset_config("tiny"))
    for fam, spec in model_families(cfg, include_mtp=False).items():
        for member in ("",) if spec.role in ("fp32", "int64") else ("weight", "scale"):
            native = f"{fam}.{member}" if member else fam
            if fused_expert_name(native):
                continue
            assert to_native(to_transformers(native)) == [(native, None)], native


def test_fused_experts_slices():
    entries = dict(to_native("model.layers.2.mlp.experts.gate_up_proj", (4, 2 * 8, 16)))
    assert entries["layers.2.ffn.experts.1.w1.weight"].offset == 1 * 16 * 16
    assert entries["layers.2.ffn.experts.1.w3.weight"].offset == (1 * 16 + 8) * 16
    assert entries["layers.2.ffn.experts.1.w3.weight"].shape == (8, 16)
    down = dict(to_native("model.layers.2.mlp.experts.down_proj", (4, 16, 8)))
    assert down["layers.2.ffn.experts.3.w2.weight"].offset == 3 * 16 * 8
