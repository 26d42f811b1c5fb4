"""Fault injection and `fp4check selftest`: every known MoE bug class is caught, clean runs stay clean."""

import json
import math

from conftest import run_cli

# fault -> the stage that must catch it first (the checks' own pipeline order)
EXPECTED = {
    "no-swiglu-clamp": "act",
    "searchsorted-boundary": "l1",
    "drop-tokens-past-128": "quant_l1",
    "fixed-128-scale-slots": "quant_l1",
    "offsets-leading-zero": "l1",
    "global-ids-as-local": "quant_l1",
    "shared-l1-l2-scale": "quant_l2",
    "global-swizzle": "quant_l1",
    "tiny-input-scale": "quant_l1",
    "nibble-swap": "quant_l1",
    "biased-routing-weights": "route",
    "no-routed-scaling": "route",
}


def test_selftest_detects_every_fault_and_flags_no_clean_run(tiny_modelopt, tmp_path):
    r = run_cli("selftest", "--checkpoint", str(tiny_modelopt), "--out", str(tmp_path / "st"), "--json")
    assert r.exit_code == 0, r.stdout[-2000:]
    m = json.loads(r.stdout)["matrix"]
    clean = [x for x in m if x["fault"] == "(clean)"]
    assert len(clean) >= 4 and all(x["ok"] and x["failing_rows"] == 0 for x in clean)
    caught = {x["fault"]: x["caught_by"].rsplit(".", 1)[-1] for x in m if x["fault"] != "(clean)"}
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
