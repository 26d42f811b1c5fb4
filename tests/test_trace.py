"""`fp4check nan-trace`: the first NaN producer and its cause, on defective checkpoints and injected faults."""

import json

import pytest
from conftest import run_cli

from fp4check.synth.writer import synthesize


@pytest.fixture(scope="module")
def bad_scales(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "bis"
    synthesize(out, "tiny", "modelopt", defects=["bad-input-scale@L1.E*.w1", "bad-input-scale@L1.E*.w3"])
    return out


@pytest.fixture(scope="module")
def nan_weight(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "nw"
    synthesize(out, "tiny", "modelopt", defects=["nan-weight@L2.E3.w1"])
    return out


@pytest.fixture(scope="module")
def nan_wq_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "nq"
    synthesize(out, "tiny", "modelopt", defects=["nan-weight@L1.wq_a"])
    return out


SUPPORT = __import__("pathlib").Path(__file__).parent / "support_backends.py"


def _trace(*args):
    r = run_cli("nan-trace", "--json", *args)
    return r.exit_code, json.loads(r.stdout)


def test_bad_input_scale_is_named_at_quant_l1(bad_scales, tmp_path):
    code, d = _trace("--checkpoint", str(bad_scales), "--inject", "unclamped-scale-cast", "--out", str(tmp_path / "t"))
    assert code == 1
    p = d["producer"]
    assert (p["layer"], p["block"], p["stage"]) == (1, "moe", "quant_l1")
    assert "input scale" in d["cause"] and "layers.1.ffn.experts." in d["cause"] and "too small" in d["cause"]
    assert (
        d["diagnosis"]["exact_pipeline_finite"] is True
    )  # the saturating cast survives: the kernel's cast is at fault
    assert "L1.moe.l1" in d["propagators"] and not any(x.startswith("L0") for x in d["propagators"])
    assert (tmp_path / "t" / "trace.json").is_file() and (tmp_path / "t" / "results.parquet").is_file()
    html = tmp_path / "t.html"
    run_cli("report", str(tmp_path / "t"), "--html", str(html))
    assert "trace-tree" in html.read_text() and "PRODUCER" in html.read_text()


def test_nan_weight_is_named_as_the_data(nan_weight):
    code, d = _trace("--checkpoint", str(nan_weight))
    assert code == 1
    assert (d["producer"]["layer"], d["producer"]["stage"]) == (2, "l1")
    assert d["diagnosis"]["where"]["experts"] == [3]
    assert d["diagnosis"]["exact_pipeline_finite"] is False
    assert "layers.2.ffn.experts.3.w1" in d["cause"] and "NaN code" in d["cause"]


def test_kernel_bug_is_named_as_the_kernel(tiny_modelopt):
    code, d = _trace("--checkpoint", str(tiny_modelopt), "--layers", "1", "--backend", f"{SUPPORT}:NanGemm")
    assert code == 1 and d["producer"]["sid"] == "L1.moe.l1"
    assert d["diagnosis"]["exact_pipeline_finite"] is True and "kernel" in d["cause"]


def test_nan_weight_in_attention_is_named_with_the_path_through_the_chain(nan_wq_a, tmp_path):
    """An attention-made NaN: the producer is L1.attn.q (wq_a feeds every head), every later stage of the
    chain only passes it on, and the cause names the weight as the data."""
    code, d = _trace("--checkpoint", str(nan_wq_a), "--out", str(tmp_path / "t"))
    assert code == 1
    p = d["producer"]
    assert (p["sid"], p["block"], p["stage"]) == ("L1.attn.q", "attn", "q")
    assert d["diagnosis"]["exact_pipeline_finite"] is False
    assert "layers.1.attn.wq_a" in d["cause"] and "NaN" in d["cause"]
    # the indexer reads qr from the same wq_a: a propagator, not a second producer
    assert "L1.attn.indexer" in d["propagators"] and "L1.attn.core" in d["propagators"]
    assert {"L1.moe.l1", "L1.out", "L2.attn.q", "L3.out"} <= set(d["propagators"])
    assert not any(x.startswith("L0") for x in d["propagators"])
    tree = d["tree"]
    assert tree[0] == "L0 finite" and "L1 NaN" in tree and "  attn" in tree and "  moe" in tree
    rows = __import__("pandas").read_parquet(tmp_path / "t" / "results.parquet")
    assert {"L0.attn.kv_read", "L1.attn.q", "L1.hc.attn_pre", "L3.out"} <= set(rows["stage"])
    assert rows.loc[rows.stage == "L1.attn.q", "status"].item() == "fail"


def test_attention_kernel_bug_is_named_as_the_kernel(tiny_modelopt):
    """A cache read one slot too far meets the pool's NaN poison: the producer is kv_read, and the exact
    pipeline reading the same rows stays finite, so the kernel is at fault."""
    code, d = _trace("--checkpoint", str(tiny_modelopt), "--layers", "0", "--backend", f"{SUPPORT}:ReadsPastTheWrite")
    assert code == 1 and d["producer"]["sid"] == "L0.attn.kv_read"
    assert d["diagnosis"]["exact_pipeline_finite"] is True
    assert "kernel" in d["cause"] and "attn.kv_read" in d["cause"]
    assert d["diagnosis"]["where"]["tokens"] or d["diagnosis"]["where"]["entries"]


def test_clean_checkpoint_has_no_nan(tiny_modelopt):
    code, d = _trace("--checkpoint", str(tiny_modelopt))
    assert code == 0 and d["producer"] is None and d["cause"] == "no NaN or Inf in any stage"


def test_divergence_trace(tiny_modelopt):
    code, d = _trace("--checkpoint", str(tiny_modelopt), "--metric", "cosine", "--threshold", "0.9999", "--layers", "1")
    # the q projection (FP8 weights, 1x128 activation quantization) is the first lossy step in data-flow order
    assert code == 1 and d["first"] == "L1.attn.q"
    code, d = _trace("--checkpoint", str(tiny_modelopt), "--metric", "cosine", "--threshold", "0.5", "--layers", "1")
    assert code == 0 and d["first"] is None


def test_bisection_finds_the_blocks_a_non_local_bug_needs(tiny_modelopt):
    """stale-entry-cache: layer 2 (C128A) reads the entries layer 0 left in a reused cache. Neither block
    fails alone; the bisection must end at exactly the pair, and print its steps."""
    r = run_cli(
        "nan-trace",
        "--bisect",
        "--inject",
        "stale-entry-cache",
        "--layers",
        "0-2",
        "--checkpoint",
        str(tiny_modelopt),
        "--json",
    )
    assert r.exit_code == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["minimal"] == ["L0.attn", "L2.attn"] and "non-local" in out["cause"]
    steps = out["steps"]
    assert steps[0]["reproduces"] and len(steps[0]["on_backend"]) == 6
    assert any(not s["reproduces"] and s["on_backend"] == ["L2.attn"] for s in steps)


def test_bisection_of_a_clean_backend_finds_nothing(tiny_modelopt):
    r = run_cli("nan-trace", "--bisect", "--layers", "3", "--checkpoint", str(tiny_modelopt), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["minimal"] is None


def test_a_moe_only_plugin_is_traced_with_emulated_attention(tiny_modelopt):
    plugin = SUPPORT.parent.parent / "examples" / "plugin_backend.py"
    code, d = _trace("--checkpoint", str(tiny_modelopt), "--layers", "1", "--backend", f"{plugin}:FusedRunnerBackend")
    assert code == 0 and d["producer"] is None
    assert d["notes"] and "attention stages ran on the emulated ops" in d["notes"][0]
