"""Every kind of bad input: one line on stderr naming the thing and the fix, exit code 2, no traceback."""

import json
import shutil

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file


def assert_input_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def ckpt(tiny_bf16, tmp_path):
    work = tmp_path / "ckpt"
    shutil.copytree(tiny_bf16, work)
    return work


def _index(path):
    return json.loads((path / "model.safetensors.index.json").read_text())


def _rewrite(path, name, change):
    """Apply change(tensors) to the shard holding `name`, keeping the index consistent."""
    index = _index(path)
    shard = path / index["weight_map"][name]
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard.name}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_directory(tmp_path):
    assert_input_error(run_cli("info", "--checkpoint", str(tmp_path / "nope")), "does not exist")


def test_missing_config(tmp_path):
    assert_input_error(run_cli("info", "--checkpoint", str(tmp_path)), "no config.json")


def test_unparseable_json(ckpt):
    (ckpt / "config.json").write_text('{"hidden_size": 256,')
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), "config.json", "not valid JSON")


def test_unparseable_index(ckpt):
    (ckpt / "model.safetensors.index.json").write_text("[")
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), "index.json", "not valid JSON")


def test_truncated_header(ckpt):
    shard = ckpt / _index(ckpt)["weight_map"]["layers.1.attn.wq_a.weight"]
    shard.write_bytes(shard.read_bytes()[:20])
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), shard.name, "truncated")


def test_truncated_data(ckpt):
    shard = ckpt / _index(ckpt)["weight_map"]["layers.1.attn.wq_a.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), shard.name, "truncated")


def test_corrupt_header_json(ckpt):
    shard = ckpt / _index(ckpt)["weight_map"]["layers.1.attn.wq_a.weight"]
    data = bytearray(shard.read_bytes())
    data[8:12] = b"@@@@"
    shard.write_bytes(bytes(data))
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), shard.name, "corrupt")


def test_index_names_missing_shard(ckpt):
    index = _index(ckpt)
    shard = index["weight_map"]["layers.2.attn.wkv.weight"]
    (ckpt / shard).unlink()
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), shard, "missing")


def test_tensor_missing_for_a_layer(ckpt):
    _rewrite(ckpt, "layers.1.attn.wq_a.weight", lambda t: t.pop("layers.1.attn.wq_a.weight"))
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), "layers.1.attn.wq_a", "layer 1")


def test_wrong_shape(ckpt):
    def change(t):
        t["layers.2.attn.wkv.weight"] = t["layers.2.attn.wkv.weight"][:, :128].contiguous()

    _rewrite(ckpt, "layers.2.attn.wkv.weight", change)
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), "layers.2.attn.wkv", "config.json implies")


def test_wrong_dtype_is_an_unknown_format(tiny_modelopt, tmp_path):
    work = tmp_path / "mo"
    shutil.copytree(tiny_modelopt, work)
    name = "layers.1.ffn.experts.0.w1.weight_scale"

    def change(t):
        t[name] = t[name].to(torch.float32)  # scales as fp32 instead of e4m3

    _rewrite(work, name, change)
    assert_input_error(run_cli("info", "--checkpoint", str(work)), "layers.1.ffn.experts.0.w1", "weight_scale:F32")


def test_wrong_scalar_dtype(tiny_modelopt, tmp_path):
    from fp4check.checkpoint import Checkpoint
    from fp4check.errors import InputError

    work = tmp_path / "mo"
    shutil.copytree(tiny_modelopt, work)
    name = "layers.1.ffn.experts.0.w1.input_scale"

    def change(t):
        t[name] = t[name].to(torch.bfloat16)

    _rewrite(work, name, change)
    with pytest.raises(InputError, match="input_scale must be one float32"):
        Checkpoint(work).weight("layers.1.ffn.experts.0.w1")


def test_unknown_dtype_in_header(ckpt):
    shard = ckpt / _index(ckpt)["weight_map"]["layers.1.attn.wq_a.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b'"BF16"', b'"Q716"', 1))  # same length: the header stays valid JSON
    assert_input_error(run_cli("info", "--checkpoint", str(ckpt)), "dtype Q716")


def test_unknown_preset(tmp_path):
    assert_input_error(run_cli("synth", "--preset", "huge", "--out", str(tmp_path / "x")), "--preset", "huge")


def test_unknown_format(tmp_path):
    assert_input_error(run_cli("synth", "--format", "gguf", "--out", str(tmp_path / "x")), "--format")


def test_unknown_defect(tmp_path):
    assert_input_error(run_cli("synth", "--out", str(tmp_path / "x"), "--defect", "melted@L1.E0.w1"), "unknown defect")


def test_synth_refuses_to_overwrite(tiny_bf16):
    assert_input_error(run_cli("synth", "--out", str(tiny_bf16)), "already holds a checkpoint")


def test_unknown_option():
    assert_input_error(run_cli("info", "--bogus"), "--bogus", "fp4check info --help")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(tiny_modelopt, tmp_path):
    assert_input_error(
        run_cli("layer", "--type", "C4A", "--device", "cuda", "--checkpoint", str(tiny_modelopt)),
        "--device cuda",
        "GPU",
    )
    assert_input_error(
        run_cli("synth", "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path / "s")), "--device cuda"
    )
    assert not (tmp_path / "s").exists()
