"""`fp4check layer` (whole layer, prefill and decode) and `fp4check chain` end to end."""

import json
import shutil

import pytest
import torch
from conftest import run_cli

from fp4check.layer_check import ATTN_STAGES


def _rows(result):
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)["rows"]


def _by(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def test_whole_c4a_layer_prefill_and_decode(tiny_modelopt):
    r = run_cli("layer", "--type", "C4A", "--checkpoint", str(tiny_modelopt), "--json")
    rows = _rows(r)
    assert r.exit_code == 0, [x for x in rows if x["status"] != "pass"]
    stages = {x["stage"] for x in rows}
    for s in ATTN_STAGES:
        assert f"L1.attn.{s}" in stages, s
    for s in ("L1.hc.attn_pre", "L1.hc.attn_post", "L1.hc.ffn_pre", "L1.hc.ffn_post", "L1.out", "L1.moe.l1"):
        assert s in stages, s
    assert {x["ref_mode"] for x in rows} == {"served"} and {x["phase"] for x in rows} == {"prefill", "decode"}
    # the FP8 cache read-back equals the served reference bit for bit, and its bytes the 584-byte record
    for s in ("L1.attn.kv_read", "L1.attn.kv_write"):
        assert all(x["code_match"] == 1.0 for x in _by(rows, stage=s, propagation="isolated"))
    dec = {x["compared_to"]: x for x in _by(rows, stage="L1.attn.decode")}
    assert dec["prefill"]["cosine"] > 0.9999 and 0.99 < dec["reference"]["cosine"] < 1.0
    idx = _by(rows, stage="L1.attn.indexer", compared_to="reference", propagation="isolated")[0]
    assert 0.8 <= idx["overlap"] <= 1.0 and idx["cosine"] > 0.99


@pytest.mark.parametrize("alias, layer", [("CSA", 1), ("hca", 2), ("SWA", 3)])
def test_type_aliases_pick_the_first_layer_of_the_type(tiny_modelopt, alias, layer):
    r = run_cli(
        "layer", "--type", alias, "--only", "attn", "--mode", "prefill", "--checkpoint", str(tiny_modelopt), "--json"
    )
    rows = _rows(r)
    assert {x["layer"] for x in rows} == {layer}
    stages = {x["stage"].split(".")[-1] for x in rows}
    assert ("compress" in stages) == (layer != 3) and ("indexer" in stages) == (layer == 1)


def test_a_type_the_checkpoint_lacks_names_the_types_it_has(tiny_modelopt, tmp_path):
    ck = tmp_path / "no-swa"
    shutil.copytree(tiny_modelopt, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["compress_ratios"] = [128, 4, 128, 4, 0]
    (ck / "config.json").write_text(json.dumps(cfg))
    r = run_cli("layer", "--type", "SWA", "--checkpoint", str(ck))
    assert r.exit_code == 2 and "no SWA layer" in r.stderr and "C128A, C4A" in r.stderr
    assert "Traceback" not in r.stderr


def test_layer_edges(tiny_modelopt):
    r = run_cli("layer", "--layer", "9", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "out of range" in r.stderr
    r = run_cli("layer", "--type", "C4A", "--scenario", "skewed", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "--only moe" in r.stderr
    # one token, exact reference, decode only
    r = run_cli(
        "layer",
        "--type",
        "C128A",
        "--tokens",
        "1",
        "--mode",
        "decode",
        "--ref-mode",
        "exact",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    rows = _rows(r)
    assert r.exit_code == 0 and {x["phase"] for x in rows} == {"decode"} and {x["ref_mode"] for x in rows} == {"exact"}


def test_reference_backend_layer_is_exact(tiny_modelopt):
    r = run_cli(
        "layer",
        "--type",
        "C4A",
        "--backend",
        "reference",
        "--mode",
        "prefill",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    rows = _rows(r)
    checked = [x for x in rows if x["status"] != "skip" and x["stage"].startswith("L1.attn")]
    assert checked and all(x["cosine"] == pytest.approx(1.0, abs=1e-9) for x in checked if x["cosine"] is not None)


def test_a_nan_in_attention_fails_the_stage_that_made_it(tiny_modelopt, tmp_path):
    plugin = tmp_path / "nan_attn.py"
    plugin.write_text(
        "import torch\n"
        "from fp4check.kernels.emulated import EmulatedBackend\n"
        "class NaNCore(EmulatedBackend):\n"
        "    name = 'nan-core'\n"
        "    def paged_attention(self, q, pages, block, slots, sink):\n"
        "        out = super().paged_attention(q, pages, block, slots, sink)\n"
        "        out[3, 0, 7] = float('nan')\n"
        "        return out\n"
        "backend = NaNCore()\n"
    )
    r = run_cli(
        "layer",
        "--type",
        "SWA",
        "--only",
        "attn",
        "--mode",
        "prefill",
        "--backend",
        f"{plugin}:backend",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    rows = _rows(r)
    assert r.exit_code == 1
    core = _by(rows, stage="L3.attn.core", compared_to="reference", propagation="isolated")[0]
    assert core["status"] == "fail" and core["nan_out"] == 1
    assert all(x["status"] == "pass" for x in _by(rows, stage="L3.attn.q"))


def test_chain_over_all_layers_and_the_head(tiny_modelopt, tmp_path):
    dump = tmp_path / "dump"
    r = run_cli("chain", "--prompt-len", "140", "--dump", str(dump), "--checkpoint", str(tiny_modelopt), "--json")
    rows = _rows(r)
    assert r.exit_code == 0, [x for x in rows if x["status"] != "pass"]
    for n in range(4):
        for s in ("hc.attn_pre", "attn.out", "hc.attn_post", "hc.ffn_pre", "moe.out", "out"):
            assert _by(rows, stage=f"L{n}.{s}", compared_to="reference", propagation="propagated"), (n, s)
        assert _by(rows, stage=f"L{n}.out", propagation="isolated")
    logits = _by(rows, stage="head.logits", compared_to="reference")[0]
    assert 0.9 < logits["cosine"] < 1.0 and 0.0 < logits["overlap"] <= 1.0
    from safetensors.torch import load_file

    for side in ("reference", "backend"):
        d = load_file(str(dump / f"{side}.safetensors"))
        assert d["layers.3.streams"].shape == (140, 4, 256) and d["logits"].shape == (140, 1024)
        assert d["token_ids"].shape == (140,)
    ref, got = load_file(str(dump / "reference.safetensors")), load_file(str(dump / "backend.safetensors"))
    assert torch.equal(ref["streams.in"], got["streams.in"]) and not torch.equal(ref["logits"], got["logits"])


def test_chain_takes_token_ids_and_a_layer_range(tiny_modelopt):
    r = run_cli("chain", "--tokens", "5,6,7,8,9", "--layers", "1-2", "--checkpoint", str(tiny_modelopt), "--json")
    rows = _rows(r)
    assert {x["layer"] for x in rows} == {1, 2} and {x["tokens"] for x in rows} == {5}
    assert not _by(rows, stage="head.logits")
    for args, msg in (
        (("--layers", "2-7"), "out of range"),
        (("--layers", "x"), "A-B"),
        (("--tokens", "1,2,5000"), "ids in 0..1023"),
        (("--tokens", "a,b"), "comma-separated"),
        (("--prompt-len", "0"), "out of range"),
    ):
        r = run_cli("chain", *args, "--checkpoint", str(tiny_modelopt))
        assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.stderr, args
