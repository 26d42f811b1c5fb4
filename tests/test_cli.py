"""The commands through click's CliRunner, and the README's command reference against --help."""

import json
import re
from pathlib import Path

from conftest import run_cli

from fp4check.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_info_on_the_built_in_checkpoint():
    r = run_cli("info")
    assert r.exit_code == 0, r.stderr
    assert "layer schedule" in r.stdout and "C4A" in r.stdout and "nvfp4-modelopt" in r.stdout
    r2 = run_cli("info", "--json")
    d = json.loads(r2.stdout)
    assert [x["type"] for x in d["layers"]] == ["C128A", "C4A", "C128A", "SWA"]
    assert [x["routing"] for x in d["layers"]] == ["hash", "bias", "bias", "bias"]
    formats = {(f["pattern"], f["format"]) for f in d["formats"]}
    assert ("layers.*.ffn.experts.*.{w1,w2,w3}", "nvfp4-modelopt") in formats
    assert ("mtp.*.ffn.experts.*.{w1,w2,w3}", "mxfp4") in formats
    assert d["shards"] > 1 and d["total_bytes"] > 0


def test_info_json_counts_match_the_checkpoint(tiny_ct):
    d = json.loads(run_cli("info", "--checkpoint", str(tiny_ct), "--json").stdout)
    ckpt = Checkpoint(tiny_ct)
    assert d["tensors"] == len(ckpt.names())
    assert sum(f["tensors"] for f in d["formats"]) == len(ckpt.names())
    experts = [f for f in d["formats"] if f["pattern"] == "layers.*.ffn.experts.*.{w1,w2,w3}"]
    assert experts[0]["format"] == "nvfp4-ct" and experts[0]["families"] == 4 * 16 * 3


def test_synth_then_info(tmp_path):
    out = tmp_path / "ckpt"
    r = run_cli(
        "synth",
        "--preset",
        "tiny",
        "--format",
        "compressed-tensors",
        "--out",
        str(out),
        "--seed",
        "3",
        "--defect",
        "bad-input-scale@L1.E0.w1",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["seed"] == 3 and d["defects"] == ["bad-input-scale@layers.1.ffn.experts.0.w1"]
    assert run_cli("info", "--checkpoint", str(out)).exit_code == 0


def test_doctor():
    r = run_cli("doctor", "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["versions"]["torch"] and d["versions"]["python"]
    by_name = {b["backend"]: b for b in d["backends"]}
    assert by_name["reference"]["available"] and by_name["emulated"]["available"]
    import torch

    if not torch.cuda.is_available():
        assert not by_name["triton"]["available"] and by_name["triton"]["reason"]
        assert not by_name["cutedsl"]["available"]
    assert "backends" in run_cli("doctor").stdout


def test_readme_command_reference_is_current():
    """README's reference section is generated from --help (python bench/../scripts); keep it in sync."""
    from scripts_readme import render_reference

    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- commands:start -->\n(.*?)<!-- commands:end -->", text, re.S)
    assert m, "README has no generated command reference"
    assert m.group(1) == render_reference(), "README is stale: run python tests/scripts_readme.py --write"
