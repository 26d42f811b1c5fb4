"""Synthetic checkpoints: structure, determinism, calibrated input scales, defects, the cached default."""

import hashlib
import json
import math

import pytest
import torch

from fp4check.checkpoint import Checkpoint
from fp4check.config import parse_config
from fp4check.errors import InputError
from fp4check.layout import model_families
from fp4check.references.common import clamped_swiglu, rms_norm
from fp4check.synth.presets import preset_config
from fp4check.synth.values import generator
from fp4check.synth.writer import STAMP_FILE, synthesize


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_tiny_structure(tiny_modelopt):
    ckpt = Checkpoint(tiny_modelopt)
    cfg = ckpt.config
    assert cfg.num_hidden_layers >= 4
    assert {li.layer_type for li in cfg.layers} == {"C128A", "C4A", "SWA"}
    assert {li.routing for li in cfg.layers} == {"hash", "bias"}
    assert cfg.qk_rope_head_dim == 64 and cfg.head_dim == 512 and cfg.num_experts_per_tok == 6
    size = sum(f.stat().st_size for f in tiny_modelopt.iterdir())
    assert size < 16 * 2**20  # a few MB
    assert len(ckpt.shard_files) > 1  # sharded with an index, like the releases
    hf = json.loads((tiny_modelopt / "hf_quant_config.json").read_text())
    assert hf["producer"]["name"] == "modelopt" and hf["quantization"]["group_size"] == 16
    assert cfg.quant.moe_quant_algo == "NVFP4" and cfg.quant.quant_algo == "MIXED_PRECISION"


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_modelopt, tmp_path):
    again = tmp_path / "again"
    synthesize(again, "tiny", "modelopt", seed=0)
    assert _digest(again) == _digest(tiny_modelopt)
    other = tmp_path / "other"
    synthesize(other, "tiny", "modelopt", seed=1)
    assert _digest(other) != _digest(tiny_modelopt)


def test_weights_are_heavy_tailed_and_scales_vary(tiny_bf16):
    ckpt = Checkpoint(tiny_bf16)
    w = ckpt.weight("layers.1.ffn.experts.0.w1").dequantize()
    z = (w - w.mean()) / w.std()
    assert float(z.pow(4).mean()) > 4.0  # kurtosis above the Gaussian 3: outliers make block scales matter
    amax = [float(ckpt.weight(f"layers.1.ffn.experts.{e}.w1").dequantize().abs().max()) for e in range(8)]
    assert max(amax) / min(amax) > 1.5  # per-expert spread: global scales differ


def test_input_scales_are_calibrated_on_the_models_activations(tiny_modelopt):
    """input_scale * 2688 is the amax of what the expert meets: ffn_norm(h) for w1, the clamped SwiGLU for w2."""
    ckpt = Checkpoint(tiny_modelopt)
    cfg = ckpt.config
    ids = torch.randint(0, cfg.vocab_size, (256,), generator=generator(0, "calibration"))
    h = ckpt.weight("embed").dequantize()[ids]
    x = rms_norm(h, ckpt.weight("layers.1.ffn_norm").dequantize(), cfg.rms_norm_eps)
    w1, w3, w2 = (ckpt.weight(f"layers.1.ffn.experts.4.{p}") for p in ("w1", "w3", "w2"))
    assert w1.input_scale.value.item() * 2688 == pytest.approx(float(x.abs().max()), rel=0.02)
    hidden = clamped_swiglu(x @ w1.dequantize().t(), x @ w3.dequantize().t(), cfg.swiglu_limit)
    assert w2.input_scale.value.item() * 2688 == pytest.approx(float(hidden.abs().max()), rel=0.15)


DEFECTS = [
    "bad-input-scale@L1.E0.w1",
    "nan-weight@L1.E1.w1",
    "nan-weight@L1.wq_a",
    "inf-scale@L1.E0.w2",
    "e4m3-nan-code@L2.E1.w1",
    "w1-w3-scale-mismatch@L1.E2.w1",
    "zero-global-scale@L2.E0.w1",
    "e4m3-nan-code@L2.wkv",
]


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects") / "ckpt"
    synthesize(out, "tiny", "modelopt", seed=0, defects=DEFECTS)
    return Checkpoint(out)


def test_defects_change_exactly_their_target(defective, tiny_modelopt):
    clean = Checkpoint(tiny_modelopt)
    d, c = defective, clean
    assert d.tensor("layers.1.ffn.experts.0.w1.input_scale").item() == pytest.approx(
        c.tensor("layers.1.ffn.experts.0.w1.input_scale").item() / 3977.6, rel=1e-6
    )
    bad = d.weight("layers.1.ffn.experts.1.w1").dequantize()
    assert bool(torch.isnan(bad[0, :16]).all()) and int(torch.isnan(bad).sum()) == 16
    wq_a = d.tensor("layers.1.attn.wq_a.weight").view(torch.uint8)
    assert wq_a[0, 0].item() == 0x7F and int(((wq_a & 0x7F) == 0x7F).sum()) == 1  # one NaN byte, nothing else
    assert math.isinf(d.tensor("layers.1.ffn.experts.0.w2.weight_scale_2").item())
    assert d.tensor("layers.2.ffn.experts.1.w1.weight_scale").view(torch.uint8)[0, 0].item() == 0x7F
    assert d.tensor("layers.2.ffn.experts.0.w1.weight_scale_2").item() == 0.0
    assert d.tensor("layers.2.attn.wkv.weight").view(torch.uint8)[0, 0].item() == 0x7F
    w3d, w3c = d.weight("layers.1.ffn.experts.2.w3"), c.weight("layers.1.ffn.experts.2.w3")
    assert w3d.nvfp4.global_scale.value.item() == 16 * w3c.nvfp4.global_scale.value.item()
    cos = torch.nn.functional.cosine_similarity(w3d.dequantize().flatten(), w3c.dequantize().flatten(), dim=0)
    assert cos > 0.9  # still a valid encoding of the same weight, just coarser
    untouched = [
        "layers.1.ffn.experts.3.w1.weight",
        "layers.1.ffn.experts.2.w1.weight_scale_2",
        "layers.3.attn.wq_a.weight",
    ]
    for name in untouched:
        assert torch.equal(d.tensor(name).reshape(-1).view(torch.uint8), c.tensor(name).reshape(-1).view(torch.uint8))
    stamp = json.loads((d.path / STAMP_FILE).read_text())
    assert len(stamp["defects"]) == len(DEFECTS)


@pytest.mark.parametrize(
    "defect,match",
    [
        ("melted-scale@L1.E0.w1", "unknown defect"),
        ("nan-weight", "needs a location"),
        ("nan-weight@L9.E0.w1", "names no tensor family"),
        ("bad-input-scale@L1.wq_a", "does not apply"),
        ("w1-w3-scale-mismatch@L1.wq_a", "w1 or w3"),
    ],
)
def test_bad_defects(defect, match, tmp_path):
    with pytest.raises(InputError, match=match):
        synthesize(tmp_path / "x", "tiny", "modelopt", defects=[defect])


def test_real_shapes_of_layer_presets():
    pro = model_families(parse_config(preset_config("pro-layer")))
    assert pro["layers.0.ffn.experts.383.w1"].shape == (3072, 7168)
    assert pro["layers.0.ffn.experts.0.w2"].shape == (7168, 3072)
    assert pro["layers.0.attn.wq_a"].shape == (1536, 7168)
    assert pro["layers.0.attn.wq_b"].shape == (128 * 512, 1536)
    assert pro["layers.0.attn.wo_a"].shape == (16 * 1024, 4096)
    flash = model_families(parse_config(preset_config("flash-layer")))
    assert flash["layers.0.ffn.experts.255.w3"].shape == (2048, 4096)
    assert flash["layers.0.attn.wo_a"].shape == (8 * 1024, 4096)


def test_default_checkpoint_cached_and_regenerated(monkeypatch, tmp_path):
    from fp4check import cache

    monkeypatch.setenv("FP4CHECK_CACHE", str(tmp_path / "cache"))
    path, made = cache.default_checkpoint()
    assert made and (path / "config.json").is_file()
    assert cache.default_checkpoint() == (path, False)
    stamp = json.loads((path / STAMP_FILE).read_text())
    stamp["generator_version"] = -1  # an older generator wrote it
    (path / STAMP_FILE).write_text(json.dumps(stamp))
    again, made = cache.default_checkpoint()
    assert made and again == path
    assert json.loads((path / STAMP_FILE).read_text())["generator_version"] != -1


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors", "deepseek", "bf16"])
def test_stored_layout_describes_what_encode_writes(fmt):
    """The data-free layout (used to build the Pro-size bench index) matches the encoder, dtype for dtype."""
    from fp4check.safetensors_io import torch_dtype
    from fp4check.synth.formats import encode, storage_of, stored_layout
    from fp4check.synth.values import family_values

    cfg = parse_config(preset_config("tiny"))
    specs = model_families(cfg)
    for name in (
        "layers.1.ffn.experts.0.w1",
        "layers.1.attn.wo_a",
        "mtp.0.ffn.experts.2.w2",
        "layers.0.ffn.gate.tid2eid",
        "layers.1.attn.compressor.ape",
        "layers.2.ffn.shared_experts.w2",
        "embed",
    ):
        spec = specs[name]
        storage = storage_of(spec, fmt)
        members = encode(spec, family_values(spec, cfg, 0), storage, 1.0)
        layout = stored_layout(spec, storage)
        assert set(members) == set(layout), name
        for m, t in members.items():
            assert (t.dtype, tuple(t.shape)) == (torch_dtype(layout[m][0]), layout[m][1]), (name, m)
