"""config.json in DeepSeek's form and transformers' form map to one schedule (spec §1)."""

import pytest

from fp4check.config import parse_config
from fp4check.errors import InputError
from fp4check.synth.presets import PRO_RELEASE, preset_config

PRO = PRO_RELEASE


def test_pro_schedule():
    cfg = parse_config(PRO)
    assert cfg.num_hidden_layers == 61 and len(cfg.layers) == 61  # the trailing MTP slot is not a trunk layer
    assert cfg.mtp_compress_ratios == (0,)
    types = [li.layer_type for li in cfg.layers]
    assert types.count("C128A") == 31 and types.count("C4A") == 30 and types.count("SWA") == 0
    assert types[:4] == ["C128A", "C128A", "C4A", "C128A"] and types[60] == "C4A"
    assert [li.routing for li in cfg.layers[:4]] == ["hash", "hash", "hash", "bias"]
    assert cfg.rope_for_layer(2).theta == 160000 and cfg.rope_for_layer(2).yarn
    assert cfg.rope_compress.factor == 16 and cfg.rope_compress.original_max_position_embeddings == 65536
    assert cfg.quant.scale_fmt == "ue8m0" and cfg.quant.weight_block_size == (128, 128)
    assert cfg.layers_of_type("C4A")[:2] == [2, 4]


def test_flash_swa_layers_use_base_theta_without_yarn():
    flash = {**PRO, "num_hidden_layers": 43, "compress_ratios": [0, 0] + [4, 128] * 20 + [4] + [0]}
    cfg = parse_config(flash)
    assert [li.layer_type for li in cfg.layers[:3]] == ["SWA", "SWA", "C4A"]
    assert cfg.rope_for_layer(0).theta == 10000 and not cfg.rope_for_layer(0).yarn


def test_transformers_form_gives_the_same_schedule():
    ds = parse_config(PRO)
    names = {128: "heavily_compressed_attention", 4: "compressed_sparse_attention", 0: "sliding_attention"}
    hf = {
        k: v
        for k, v in PRO.items()
        if k not in ("compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling")
    }
    hf["layer_types"] = [names[r] for r in PRO["compress_ratios"][:61]]
    hf["compress_rates"] = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
    hf["mlp_layer_types"] = ["hash_moe"] * 3 + ["moe"] * 58
    hf["partial_rotary_factor"] = 0.125
    hf["rope_parameters"] = {
        "main": {"rope_type": "default", "rope_theta": 10000.0},
        "compress": {
            "rope_type": "yarn",
            "rope_theta": 160000.0,
            "factor": 16,
            "original_max_position_embeddings": 65536,
            "beta_fast": 32,
            "beta_slow": 1,
        },
    }
    cfg = parse_config(hf)
    assert cfg.source_form == "transformers"
    assert cfg.layers == ds.layers
    assert cfg.rope_compress == ds.rope_compress and cfg.rope_main == ds.rope_main
    assert cfg.qk_rope_head_dim == 64


def test_no_schedule_is_refused_rather_than_guessed():
    bad = {k: v for k, v in PRO.items() if k != "compress_ratios"}
    with pytest.raises(InputError, match="phase-shifted"):
        parse_config(bad)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.update(compress_ratios=[3] * 62), "0, 4 or 128"),
        (lambda d: d.pop("hidden_size"), "hidden_size"),
        (lambda d: d.update(model_type="llama"), "deepseek_v4"),
        (lambda d: d.update(hidden_size="big"), "wrong type"),
    ],
)
def test_bad_configs(mutate, match):
    d = dict(PRO)
    mutate(d)
    with pytest.raises(InputError, match=match):
        parse_config(d)


def test_layer_lookup_errors():
    cfg = parse_config(preset_config("tiny"))
    with pytest.raises(InputError, match="out of range"):
        cfg.layer(4)
    with pytest.raises(InputError, match="unknown layer type"):
        cfg.layers_of_type("MLA")
    assert {li.layer_type for li in cfg.layers} == {"C128A", "C4A", "SWA"}
    assert {li.routing for li in cfg.layers} == {"hash", "bias"}
