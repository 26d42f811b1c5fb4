"""`fp4check audit` on clean and defective synthetic checkpoints."""

import json

import pytest
from conftest import run_cli

from fp4check.synth.writer import synthesize

DEFECTS = [
    "bad-input-scale@L1.E3.w1",
    "e4m3-nan-code@L2.E1.w2",
    "zero-global-scale@L2.E0.w1",
    "w1-w3-scale-mismatch@L1.E2.w1",
    "nan-weight@L1.wq_a",
    "inf-scale@L3.E5.w3",
]


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "ckpt"
    synthesize(out, "tiny", "modelopt", defects=DEFECTS)
    return out


def test_clean_checkpoint_has_no_critical_finding(tiny_modelopt):
    r = run_cli("audit", "--checkpoint", str(tiny_modelopt), "--json")
    assert r.exit_code == 0
    findings = json.loads(r.stdout)["findings"]
    assert not [f for f in findings if f["severity"] == "critical"]
    # the calibrated input scales fit the activations; the synthetic experts' w1/w3 spread may warn
    assert {f["kind"] for f in findings if f["severity"] == "warning"} <= {"w1/w3 global scales"}


def test_every_defect_is_found_worst_first(defective):
    r = run_cli("audit", "--checkpoint", str(defective), "--json")
    assert r.exit_code == 1
    f = json.loads(r.stdout)["findings"]
    by = {(x["family"], x["kind"]): x for x in f}
    overflow = by[("layers.1.ffn.experts.3.w1", "input scale overflow")]
    assert overflow["severity"] == "critical" and 3000 < overflow["value"] < 5000  # the seeds' 3977x
    assert by[("layers.2.ffn.experts.1.w2", "e4m3 NaN code")]["severity"] == "critical"
    assert by[("layers.2.ffn.experts.0.w1", "global scale")]["severity"] == "critical"
    assert by[("layers.3.ffn.experts.5.w3", "global scale")]["severity"] == "critical"
    assert by[("layers.1.attn.wq_a", "NaN weight")]["severity"] == "critical"
    mismatch = by[("layers.1.ffn.experts.2.w1/w3", "w1/w3 global scales")]
    assert mismatch["severity"] == "warning" and mismatch["value"] > 8
    severities = [x["severity"] for x in f]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)


def test_layer_range_and_bad_ranges(defective):
    r = run_cli("audit", "--checkpoint", str(defective), "--layers", "3", "--json")
    families = {x["family"] for x in json.loads(r.stdout)["findings"]}
    assert "layers.3.ffn.experts.5.w3" in families and "layers.1.ffn.experts.3.w1" not in families
    assert run_cli("audit", "--checkpoint", str(defective), "--layers", "2-9").exit_code == 2
    assert run_cli("audit", "--checkpoint", str(defective), "--layers", "x").exit_code == 2
