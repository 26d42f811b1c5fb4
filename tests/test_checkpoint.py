"""Checkpoint loading: lazy shards, byte accounting, format detection per family, both namings."""

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

from fp4check.checkpoint import FP8_BLOCK, MXFP4, NVFP4_CT, NVFP4_MODELOPT, Checkpoint
from fp4check.errors import InputError
from fp4check.layout import layer_of
from fp4check.references.nvfp4 import DecodeScale, EncodeScale


def test_reader_matches_the_safetensors_library(tiny_modelopt):
    ckpt = Checkpoint(tiny_modelopt)
    index = json.loads((tiny_modelopt / "model.safetensors.index.json").read_text())["weight_map"]
    for name in list(index)[::7]:
        with safe_open(str(tiny_modelopt / index[name]), framework="pt") as f:
            want = f.get_tensor(name)
        got = ckpt.tensor(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name


def test_formats_detected_per_family(tiny_modelopt, tiny_ct):
    mo = Checkpoint(tiny_modelopt)
    assert mo.family_format("layers.1.ffn.experts.0.w1") == NVFP4_MODELOPT
    assert mo.family_format("layers.1.attn.wq_a") == FP8_BLOCK
    assert mo.family_format("layers.1.ffn.shared_experts.w2") == FP8_BLOCK
    assert mo.family_format("mtp.0.ffn.experts.0.w1") == MXFP4  # excluded from the NVFP4 conversion
    assert mo.family_format("layers.1.attn.compressor.wkv") == "bf16"
    assert mo.family_format("layers.0.ffn.gate.tid2eid") == "int64"
    ct = Checkpoint(tiny_ct)
    for fam in ("layers.1.ffn.experts.0.w1", "layers.1.attn.wq_b", "layers.2.ffn.shared_experts.w3"):
        assert ct.family_format(fam) == NVFP4_CT


def test_scale_conventions_become_typed(tiny_modelopt, tiny_ct):
    w = Checkpoint(tiny_modelopt).weight("layers.1.ffn.experts.2.w1")
    assert isinstance(w.nvfp4.global_scale, DecodeScale) and isinstance(w.input_scale, DecodeScale)
    c = Checkpoint(tiny_ct).weight("layers.1.ffn.experts.2.w1")
    assert isinstance(c.nvfp4.global_scale, EncodeScale) and isinstance(c.input_scale, EncodeScale)
    # same synthetic weights, two formats, two conventions: they dequantize to the same tensor up to rounding
    a, b = w.dequantize(), c.dequantize()
    assert float((a - b).abs().max()) <= float(a.abs().max()) / 8
    # ModelOpt stores decode = 1/encode: the input scales agree through the inversion
    assert w.input_scale.to_encode().value.item() == pytest.approx(c.input_scale.value.item(), rel=1e-6)


def test_w1_w3_global_scales_kept_separately(tiny_modelopt):
    ckpt = Checkpoint(tiny_modelopt)
    w1 = ckpt.weight("layers.2.ffn.experts.5.w1").nvfp4.global_scale.value
    w3 = ckpt.weight("layers.2.ffn.experts.5.w3").nvfp4.global_scale.value
    assert w1.item() != w3.item()


def test_dequantized_weights_are_close_to_the_bf16_checkpoint(tiny_modelopt, tiny_bf16):
    q, ref = Checkpoint(tiny_modelopt), Checkpoint(tiny_bf16)
    for fam in ("layers.1.ffn.experts.3.w2", "layers.1.attn.wq_b", "mtp.0.ffn.experts.1.w3"):
        a, b = q.weight(fam).dequantize(), ref.weight(fam).dequantize()
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.98, (fam, cos)


def test_layer_load_opens_only_its_shards(tiny_modelopt, tmp_path):
    """Every shard not holding layer 2 is replaced by garbage and made unreadable; layer 2 still loads."""
    work = tmp_path / "ckpt"
    shutil.copytree(tiny_modelopt, work)
    index = json.loads((work / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {shard for name, shard in index.items() if layer_of(name.rsplit(".", 1)[0]) == 2 or layer_of(name) == 2}
    spoiled = sorted(set(index.values()) - needed)
    assert spoiled, "the tiny checkpoint must spread layers over several shards"
    for shard in spoiled:
        (work / shard).write_bytes(b"\xff" * 64)
        os.chmod(work / shard, 0)
    ckpt = Checkpoint(work)
    weights = ckpt.layer(2)
    assert set(ckpt.shards_opened) <= needed
    layer_bytes = sum(w.nbytes for w in weights.values())
    assert layer_bytes <= ckpt.bytes_read <= 1.05 * layer_bytes + 64 * 1024  # tensors + shard headers
    with pytest.raises(InputError):
        ckpt.layer(0)  # layer 0 lives in a spoiled shard


def test_transformers_names_load_the_same_values(tiny_bf16, tmp_path):
    from fp4check.synth.writer import synthesize

    hf = tmp_path / "hf"
    synthesize(hf, "tiny", "bf16", seed=0, names="transformers")
    index = json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.1.mlp.experts.gate_up_proj" in index and "lm_head.weight" in index
    a, b = Checkpoint(hf), Checkpoint(tiny_bf16)
    assert a.naming == "transformers" and b.naming == "deepseek"
    for fam in (
        "layers.1.ffn.experts.7.w1",
        "layers.1.ffn.experts.7.w3",
        "layers.2.ffn.experts.0.w2",
        "layers.1.attn.indexer.compressor.norm",
        "layers.1.attn.indexer.weights_proj",
        "head",
        "layers.3.hc_ffn_scale",
        "layers.0.ffn.gate.tid2eid",
    ):
        assert torch.equal(a.weight(fam).dequantize(), b.weight(fam).dequantize()), fam


def test_single_file_checkpoint(tmp_path, tiny_bf16):
    from safetensors.torch import save_file

    ckpt = Checkpoint(tiny_bf16)
    out = tmp_path / "single"
    out.mkdir()
    shutil.copy(tiny_bf16 / "config.json", out / "config.json")
    save_file({n: ckpt.tensor(n) for n in ckpt.names()}, str(out / "model.safetensors"))
    single = Checkpoint(out)
    assert single.index_file is None and len(single.names()) == len(ckpt.names())
    assert torch.equal(single.weight("layers.3.attn.wkv").dequantize(), ckpt.weight("layers.3.attn.wkv").dequantize())


def test_deepseek_release_format(tmp_path):
    from fp4check.synth.writer import synthesize

    out = tmp_path / "ds"
    synthesize(out, "tiny", "deepseek", seed=0)
    ckpt = Checkpoint(out)
    w = ckpt.weight("layers.1.ffn.experts.0.w2")
    assert (
        w.format == MXFP4 and w.parts["weight"].dtype == torch.int8 and w.parts["scale"].dtype == torch.float8_e8m0fnu
    )
    assert w.shape == (256, 128)
    assert ckpt.config.quant.expert_dtype == "fp4"
