"""Synthetic model presets, as DeepSeek-form config.json dictionaries.

tiny: a few MB; 4 trunk layers covering C128A, C4A and SWA, hash- and bias-routed, plus the MTP
block. Real where it shapes the numerics: head_dim 512 with 64 rope dims (448 no-rope bytes in the
FP8 KV cache), NVFP4 blocks of 16 and 128-wide FP8 tiles, windows of 128, compress ratios 4 and 128,
top-6 routing, swiglu limit 10, 4 hyper-connection streams. Small everywhere else.
small: the same structure, bigger (6 layers, 3 hash layers like the release).
flash-layer / pro-layer: one trunk layer at the real V4-Flash / V4-Pro shapes (spec §1), for GPU
runs; the vocabulary is cut to 4096 since no layer check touches embed or head at full size.
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "num_key_value_heads": 1,
    "head_dim": 512,
    "qk_rope_head_dim": 64,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 16,
        "original_max_position_embeddings": 65536,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    "max_position_embeddings": 1048576,
    "sliding_window": 128,
    "n_shared_experts": 1,
    "num_experts_per_tok": 6,
    "scoring_func": "sqrtsoftplus",
    "topk_method": "noaux_tc",
    "norm_topk_prob": True,
    "swiglu_limit": 10.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "bfloat16",
}

# DeepSeek-V4-Pro's config.json as released (spec §1): not a synthetic preset, the layout the
# Pro-size benchmarks and config tests work from.
PRO_RELEASE: dict[str, Any] = {
    **_COMMON,
    "hidden_size": 7168,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "q_lora_rank": 1536,
    "o_groups": 16,
    "o_lora_rank": 1024,
    "vocab_size": 129280,
    "compress_ratios": [128, 128] + [4, 128] * 29 + [4] + [0],
    "num_hash_layers": 3,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 1024,
    "n_routed_experts": 384,
    "moe_intermediate_size": 3072,
    "routed_scaling_factor": 2.5,
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "scale_fmt": "ue8m0",
        "weight_block_size": [128, 128],
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "q_lora_rank": 128,
        "o_groups": 2,
        "o_lora_rank": 64,
        "vocab_size": 1024,
        "compress_ratios": [128, 4, 128, 0, 0],
        "num_hash_layers": 1,
        "index_n_heads": 4,
        "index_head_dim": 128,
        "index_topk": 8,
        "n_routed_experts": 16,
        "moe_intermediate_size": 128,
        "routed_scaling_factor": 2.5,
    },
    "small": {
        "hidden_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "q_lora_rank": 256,
        "o_groups": 4,
        "o_lora_rank": 128,
        "vocab_size": 4096,
        "compress_ratios": [128, 128, 4, 128, 4, 0, 0],
        "num_hash_layers": 3,
        "index_n_heads": 8,
        "index_head_dim": 128,
        "index_topk": 64,
        "n_routed_experts": 32,
        "moe_intermediate_size": 256,
        "routed_scaling_factor": 2.5,
    },
    "flash-layer": {
        "hidden_size": 4096,
        "num_hidden_layers": 1,
        "num_attention_heads": 64,
        "q_lora_rank": 1024,
        "o_groups": 8,
        "o_lora_rank": 1024,
        "vocab_size": 4096,
        "compress_ratios": [4, 0],
        "num_hash_layers": 0,
        "index_n_heads": 64,
        "index_head_dim": 128,
        "index_topk": 512,
        "n_routed_experts": 256,
        "moe_intermediate_size": 2048,
        "routed_scaling_factor": 1.5,
        "num_nextn_predict_layers": 0,
    },
    # one Pro layer: the release's shapes, a cut vocabulary, no hash routing, no MTP block
    "pro-layer": {
        **{k: v for k, v in PRO_RELEASE.items() if k not in _COMMON and k != "quantization_config"},
        "num_hidden_layers": 1,
        "vocab_size": 4096,
        "compress_ratios": [4, 0],
        "num_hash_layers": 0,
        "num_nextn_predict_layers": 0,
    },
}

# Shard size like the releases' (a layer may span two shards and a shard may hold two layers).
SHARD_BYTES = {"tiny": 1 << 20, "small": 32 << 20, "flash-layer": 2 << 30, "pro-layer": 2 << 30}
# Tokens of the calibration batch that sets input scales.
CALIBRATION_TOKENS = {"tiny": 256, "small": 256, "flash-layer": 128, "pro-layer": 64}


def preset_config(name: str) -> dict[str, Any]:
    return {**_COMMON, **PRESETS[name]}
