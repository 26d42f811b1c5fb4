"""`fp4check layer/kernel/report` end to end: results folders, gates that bite, plugins, isolation."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_cli

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support_backends.py"
EXAMPLE = TESTS.parent / "examples" / "plugin_backend.py"


def _rows(result):
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout)


def _status(rows, stage, compared_to=None, propagation=None):
    return {
        r["status"]
        for r in rows
        if r["stage"].endswith("." + stage)
        and (compared_to is None or r["compared_to"] == compared_to)
        and (propagation is None or r["propagation"] == propagation)
    }


def test_layer_moe_writes_a_results_folder(tmp_path, tiny_modelopt):
    out = tmp_path / "run"
    r = run_cli("layer", "--type", "C4A", "--only", "moe", "--checkpoint", str(tiny_modelopt), "--out", str(out))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "L1.moe.l1" in r.stdout and f"results: {out}" in r.stdout
    for f in ("meta.json", "results.jsonl", "results.parquet", "results.csv"):
        assert (out / f).is_file(), f
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["versions"]["torch"] and meta["checkpoint_fingerprint"] and meta["end"]
    import pandas as pd

    frame = pd.read_parquet(out / "results.parquet")
    stages = set(frame["stage"])
    assert {
        f"L1.moe.{s}" for s in ("route", "quant_l1", "l1", "act", "quant_l2", "l2", "combine", "shared", "out")
    } <= stages
    assert set(frame["compared_to"]) == {"reference", "emulated"} and set(frame["propagation"]) == {
        "isolated",
        "propagated",
    }
    assert (frame["status"] == "pass").all() and (frame["layer_type"] == "C4A").all()


def test_same_seed_same_table(tiny_modelopt, tmp_path):
    a = _rows(
        run_cli("kernel", "l1", "act", "--checkpoint", str(tiny_modelopt), "--json", "--out", str(tmp_path / "a"))
    )
    b = _rows(
        run_cli("kernel", "l1", "act", "--checkpoint", str(tiny_modelopt), "--json", "--out", str(tmp_path / "b"))
    )
    keep = ("stage", "compared_to", "propagation", "cosine", "sqnr_db", "status")
    assert [{k: r[k] for k in keep} for r in a["rows"]] == [{k: r[k] for k in keep} for r in b["rows"]]


def test_reference_backend_is_exactly_the_reference(tiny_modelopt):
    d = _rows(run_cli("kernel", "moe", "--backend", "reference", "--checkpoint", str(tiny_modelopt), "--json"))
    vs_ref = [r for r in d["rows"] if r["compared_to"] == "reference" and r["status"] != "skip"]
    assert vs_ref and all(r["cosine"] == 1.0 for r in vs_ref if r["metric"] == "cosine")


@pytest.mark.parametrize(
    "spec,failing,passing",
    [
        ("NoClamp", "act", "l1"),
        ("DropsTokens", "l1", "route"),
        ("SharedW1Scale", "l1", "quant_l1"),
        ("ZeroGemm", "l1", "act"),
        ("NanGemm", "l1", "quant_l1"),
        ("ForgetsItsLayout", "l1", "quant_l1"),
    ],
)
def test_broken_backends_fail_the_right_stage(tiny_modelopt, spec, failing, passing):
    r = run_cli(
        "kernel",
        "moe",
        "--scenario",
        "skewed",
        "--backend",
        f"{SUPPORT}:{spec}",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    assert r.exit_code == 1
    rows = _rows(r)["rows"]
    assert "fail" in _status(rows, failing, "emulated")
    assert _status(rows, passing, "emulated", "isolated") <= {"pass", "skip"}  # upstream of the bug, in isolation
    if spec in ("ZeroGemm", "NanGemm"):  # an all-zero or NaN output fails every comparison
        assert _status(rows, "l1", "reference", "isolated") == {"fail"}


def test_a_backend_gets_the_weights_its_prepare_laid_out(tiny_modelopt):
    """prepare_weights reorders the experts in place; the GEMM must see that layout (it asserts so), and
    every stage passes, isolated and propagated (ForgetsItsLayout above is the same runner reading rows)."""
    r = run_cli("kernel", "moe", "--scenario", "skewed", "--backend", f"{SUPPORT}:TiledWeights",
                "--checkpoint", str(tiny_modelopt), "--json")  # fmt: skip
    rows = _rows(r)["rows"]
    assert r.exit_code == 0, [(x["stage"], x["status"], x.get("message")) for x in rows if x["status"] != "pass"]
    assert _status(rows, "l1", "emulated") == _status(rows, "l2", "emulated") == {"pass"}


def test_gates_are_tunable(tiny_modelopt, tmp_path):
    r = run_cli("kernel", "l1", "--checkpoint", str(tiny_modelopt), "--threshold", "l1.reference=0.99999", "--json")
    assert r.exit_code == 1 and "fail" in _status(_rows(r)["rows"], "l1", "reference")
    toml = tmp_path / "fp4check.toml"
    toml.write_text('[thresholds]\n"l1.reference" = 0.99999\n')
    r = run_cli("kernel", "l1", "--checkpoint", str(tiny_modelopt), "--config", str(toml), "--json")
    assert r.exit_code == 1
    bad = run_cli("kernel", "l1", "--checkpoint", str(tiny_modelopt), "--threshold", "l9.reference=0.5")
    assert bad.exit_code == 2 and "unknown threshold" in bad.stderr


def test_plugins_load_three_ways(tiny_modelopt, tmp_path, monkeypatch):
    # 1. file.py:attr
    r = run_cli(
        "layer",
        "--type",
        "C4A",
        "--backend",
        f"{EXAMPLE}:FusedRunnerBackend",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    rows = _rows(r)["rows"]
    assert (
        _status(rows, "combine", "reference", "propagated") == {"pass"} and rows[0]["backend"] == "example-fused-runner"
    )
    assert _status(rows, "l1", "reference") == {"skip"}  # a fused runner without intermediates: skipped, not failed
    # 2. package.module:attr
    monkeypatch.syspath_prepend(str(TESTS))
    r = run_cli("kernel", "act", "--backend", "support_backends:NoClamp", "--checkpoint", str(tiny_modelopt), "--json")
    assert _rows(r)["rows"][0]["backend"] == "no-clamp"
    # 3. an entry point in group fp4check.backends, from an installed distribution's metadata
    dist = tmp_path / "site" / "fake_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fp4check.backends]\nmy-runner = support_backends:NoClamp\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    r = run_cli("kernel", "act", "--backend", "my-runner", "--checkpoint", str(tiny_modelopt), "--json")
    assert r.exit_code == 1 and _rows(r)["rows"][0]["backend"] == "no-clamp"


def test_unmet_needs_skip_with_the_reason(tiny_modelopt):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    r = run_cli("kernel", "l1", "--backend", f"{SUPPORT}:NeedsGpu", "--checkpoint", str(tiny_modelopt), "--json")
    rows = _rows(r)["rows"]
    assert r.exit_code == 0 and {x["status"] for x in rows} == {"skip"}
    assert "no CUDA GPU" in rows[0]["message"]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("nonsense", "unknown backend"),
        ("no_such_module:X", "does not import"),
        (f"{SUPPORT}:Missing", "has no attribute"),
        ("/nope/x.py:Y", "does not exist"),
    ],
)
def test_bad_backends_are_input_errors(spec, match, tiny_modelopt):
    r = run_cli("kernel", "l1", "--backend", spec, "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_check_inputs(tiny_modelopt):
    r = run_cli("layer", "--layer", "9", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "out of range" in r.stderr
    r = run_cli("layer", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "--type" in r.stderr
    r = run_cli("kernel", "l7", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2
    r = run_cli("kernel", "moe", "--ep-size", "3", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "does not divide" in r.stderr


def test_isolation_records_crashes_and_hangs(tiny_modelopt, tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "kernel",
        "quant",
        "l1",
        "act",
        "combine",
        "--isolate",
        "--timeout",
        "40" if os.environ.get("CI") else "25",
        "--backend",
        f"{SUPPORT}:AbortsAndHangs",
        "--checkpoint",
        str(tiny_modelopt),
        "--out",
        str(out),
        "--json",
    )
    assert r.exit_code == 1
    rows = json.loads(r.stdout)["rows"]
    by_check = {}
    for row in rows:
        by_check.setdefault(row["check"], set()).add(row["status"])
    assert by_check["kernel.quant"] == {"pass"}
    assert by_check["kernel.combine"] == {"pass"}
    assert by_check["kernel.l1"] == {"crash"}
    assert by_check["kernel.act"] == {"timeout"}
    crash = next(x for x in rows if x["status"] == "crash")
    assert "SIGABRT" in crash["message"]
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)


def test_report_renders_a_partial_folder(tiny_modelopt, tmp_path):
    out = tmp_path / "run"
    assert run_cli("kernel", "l1", "act", "--checkpoint", str(tiny_modelopt), "--out", str(out)).exit_code == 0
    # make it look killed mid-way: no parquet, no end time, last line cut off
    (out / "results.parquet").unlink()
    meta = json.loads((out / "meta.json").read_text())
    meta.pop("end")
    (out / "meta.json").write_text(json.dumps(meta))
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    r = run_cli("report", str(out))
    assert r.exit_code == 0 and "partial" in r.stdout and "L1.moe" in r.stdout
    d = json.loads(run_cli("report", str(out), "--json").stdout)
    assert d["complete"] is False and len(d["rows"]) == 3
    assert run_cli("report", str(tmp_path / "nope")).exit_code == 2


def test_8192_tokens_work(tiny_modelopt):
    r = run_cli("kernel", "combine", "--tokens", "8192", "--checkpoint", str(tiny_modelopt), "--json")
    rows = _rows(r)["rows"]
    assert r.exit_code == 0 and rows[0]["tokens"] == 8192


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
