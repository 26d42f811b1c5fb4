"""Fault injection and `fp4check selftest`: every known bug class is caught where it is made, clean runs
stay clean."""

import json
import math

from conftest import run_cli

# fault -> the stage that must catch it first (the checks' own pipeline order)
EXPECTED = {
    "no-swiglu-clamp": "L1.moe.act",
    "searchsorted-boundary": "L1.moe.l1",
    "drop-tokens-past-128": "L1.moe.quant_l1",
    "fixed-128-scale-slots": "L1.moe.quant_l1",
    "offsets-leading-zero": "L1.moe.l1",
    "global-ids-as-local": "L1.moe.quant_l1",
    "shared-l1-l2-scale": "L1.moe.quant_l2",
    "global-swizzle": "L1.moe.quant_l1",
    "tiny-input-scale": "L1.moe.quant_l1",
    "nibble-swap": "L1.moe.quant_l1",
    "biased-routing-weights": "L1.moe.route",
    "no-routed-scaling": "L1.moe.route",
    "rope-rotate-half": "L1.attn.q",
    "no-inverse-rope": "L1.attn.out",
    "sink-ignored": "L3.attn.core",
    "yarn-on-swa": "L3.attn.q",
    "csa-overlap-shift": "L1.attn.compress",
    "kv-scale-not-pow2": "L1.attn.kv_write",
    # non-local: each layer alone passes; only the chain sees layer 2 (C128A) read layer 0's entries
    "stale-entry-cache": "L2.attn.out",
}


def test_selftest_detects_every_fault_and_flags_no_clean_run(tiny_modelopt, tmp_path):
    r = run_cli("selftest", "--checkpoint", str(tiny_modelopt), "--out", str(tmp_path / "st"), "--json")
    assert r.exit_code == 0, r.stdout[-2000:]
    m = json.loads(r.stdout)["matrix"]
    clean = [x for x in m if x["fault"] == "(clean)"]
    assert len(clean) >= 7 and all(x["ok"] and x["failing_rows"] == 0 for x in clean)
    assert {x["scenario"] for x in clean} >= {"attn:C4A", "attn:SWA", "chain", "natural"}
    caught = {x["fault"]: x["caught_by"] for x in m if x["fault"] != "(clean)"}
    assert caught == EXPECTED
    tiny = next(x for x in m if x["fault"] == "tiny-input-scale")
    assert tiny["value"] is None or math.isnan(tiny["value"])  # caught through NaN, which never passes


def test_inject_is_for_the_emulated_backend_only(tiny_modelopt):
    r = run_cli(
        "kernel", "act", "--inject", "no-swiglu-clamp", "--backend", "reference", "--checkpoint", str(tiny_modelopt)
    )
    assert r.exit_code == 2 and "emulated" in r.stderr
    r = run_cli("kernel", "act", "--inject", "melted-core", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "unknown fault" in r.stderr


def test_injected_layer_run_fails_and_names_the_backend(tiny_modelopt):
    r = run_cli("layer", "--type", "C4A", "--inject", "no-routed-scaling", "--checkpoint", str(tiny_modelopt), "--json")
    assert r.exit_code == 1
    rows = json.loads(r.stdout)["rows"]
    assert rows[0]["backend"] == "emulated+no-routed-scaling"


def test_the_buffer_reuse_fault_is_non_local(tiny_modelopt):
    """The same fault in one layer alone passes: what the chain (and bisection) are for."""
    r = run_cli(
        "layer",
        "--layer",
        "2",
        "--only",
        "attn",
        "--mode",
        "prefill",
        "--inject",
        "stale-entry-cache",
        "--checkpoint",
        str(tiny_modelopt),
    )
    assert r.exit_code == 0
