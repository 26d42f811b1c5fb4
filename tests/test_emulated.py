"""The emulated NVFP4 MoE runner against a plain per-token loop, its row plan, scenarios and EP."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import moe as emu
from fp4check.moe_check import PIPELINE, MoECheck, prepare
from fp4check.references.common import clamped_swiglu
from fp4check.references.nvfp4 import nvfp4_quantize


@given(st.integers(1, 300), st.integers(1, 4), st.integers(4, 24), st.integers(1, 4), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_plan_never_drops_and_pads_each_expert_to_128(t, k, n_experts, ep, seed):
    n_experts -= n_experts % ep
    k = min(k, n_experts)
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(t)])
    if seed % 3 == 0:
        ids[:, 0] = 0  # skew: one expert gets every token
    n_local = n_experts // ep
    start = (seed % ep) * n_local
    plan = emu.plan_routes(ids, torch.rand(t, k, generator=g), start, n_local)
    local = (ids >= start) & (ids < start + n_local)
    assert torch.equal(plan.row_of >= 0, local)  # every local slot has a row, nothing else does
    rows = plan.row_of[local]
    assert rows.unique().numel() == rows.numel()  # no two slots share a row
    assert bool((plan.offsets % 128 == 0).all())
    for e in range(n_local):
        mine = plan.row_of[ids == start + e]
        assert bool((mine >= plan.offsets[e]).all()) and bool((mine < plan.offsets[e] + plan.counts[e]).all())
        assert plan.offsets[e + 1] - plan.offsets[e] == -(-int(plan.counts[e]) // 128) * 128
    tokens = torch.arange(t).unsqueeze(1).expand(t, k)
    assert torch.equal(plan.token_of[rows], tokens[local])


@given(st.integers(1, 300), st.integers(1, 6), st.integers(6, 40), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_a_plan_sized_before_routing_is_the_exact_plan_plus_padding(t, k, n_local, seed):
    """max_rows (what a CUDA graph needs: no size read back from the GPU) changes nothing but the tail."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(n_local + 3, generator=g)[:k] for _ in range(t)])  # some not local
    w = torch.rand(t, k, generator=g)
    exact = emu.plan_routes(ids, w, 0, n_local)
    bound = emu.static_rows(t, k, n_local)
    static = emu.plan_routes(ids, w, 0, n_local, max_rows=bound)
    assert exact.rows == int(exact.offsets[-1]) <= static.rows == bound
    for f in ("counts", "offsets", "row_of", "local"):
        assert torch.equal(getattr(exact, f), getattr(static, f)), f
    assert torch.equal(static.token_of[: exact.rows], exact.token_of)
    assert bool((static.token_of[exact.rows :] == -1).all())
    x = torch.randn(t, 16, generator=g)
    rows = emu.gather_rows(x, static)
    assert torch.equal(rows[: exact.rows], emu.gather_rows(x, exact)) and not rows[exact.rows :].any()
    assert torch.equal(emu.per_slot(rows, static), emu.per_slot(rows[: exact.rows], exact))


def test_gather_keeps_a_nan_token_in_its_own_rows():
    """Padding rows are 0 even when a token holds NaN (a masked multiply would spread 0 x NaN)."""
    ids = torch.tensor([[0, 1], [1, 2]])
    plan = emu.plan_routes(ids, torch.ones(2, 2), 0, 3)
    x = torch.tensor([[float("nan")] * 4, [1.0] * 4])
    rows = emu.gather_rows(x, plan)
    assert int(torch.isnan(rows).any(-1).sum()) == 2 and int((rows == 0).all(-1).sum()) == plan.rows - 4


def _per_token_loop(truth):
    """The NVFP4 pipeline one (token, slot) at a time, in float64, with the kernel's bf16 rounding points."""
    w, plan = truth.weights, truth.plan
    enc1, enc2 = w.input_scale_l1.to_encode(), w.input_scale_l2.to_encode()
    a2_dec = enc2.to_decode().value.double()
    out = torch.zeros(truth.x.shape[0], truth.x.shape[1], dtype=torch.float64)
    t, k = plan.ids.shape
    i = w.w13.packed.shape[1] // 2
    for tok in range(t):
        qx = nvfp4_quantize(truth.x[tok : tok + 1], enc1).dequantize().double()  # includes S_dec
        for slot in range(k):
            e = int(plan.local[tok, slot])
            if e < 0:
                continue
            w13 = emu._weight_values(w.w13, e).double()
            g13 = w.w13.global_scale.value[e].double()
            h = qx @ w13.t()  # activation already carries its decode scale; the weight global comes per half
            h = torch.cat([h[:, :i] * g13[0], h[:, i:] * g13[1]], -1).to(torch.bfloat16)
            act = clamped_swiglu(h[:, :i], h[:, i:], w.swiglu_limit).to(torch.bfloat16)
            qa = nvfp4_quantize(act, enc2).dequantize().double()
            w2 = emu._weight_values(w.w2, e).double() * w.w2.global_scale.value[e].double()
            l2 = (qa @ w2.t()).to(torch.bfloat16).double()
            out[tok] += plan.weights[tok, slot].double() * l2[0]
    return out, a2_dec


@pytest.mark.parametrize("scenario", ["natural", "uniform", "skewed", "empty-experts", "single-token", "hash"])
def test_emulated_matches_the_per_token_loop(tiny_modelopt, scenario):
    ckpt = Checkpoint(tiny_modelopt)
    truth = prepare(ckpt, MoECheck("t", PIPELINE, 1, scenario, 96, seed=3))
    loop, _ = _per_token_loop(truth)
    got = truth.emulated["combine"].double()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), loop.flatten(), dim=0)
    assert cos > 0.9999, (scenario, cos)
    assert bool((got.abs().sum(-1) > 0).all())  # every token received its experts' output: none dropped
    counts = truth.plan.counts
    if scenario == "skewed":
        assert int(counts[0]) >= 512 > 3 * 128
    if scenario == "empty-experts":
        assert int(counts[8:].sum()) == 0
    if scenario == "uniform":
        assert counts.min() == counts.max()


def test_expert_parallel_ranks_sum_to_the_single_rank(tiny_modelopt):
    from fp4check.moe_weights import load_moe_weights

    ckpt = Checkpoint(tiny_modelopt)
    truth = prepare(ckpt, MoECheck("t", PIPELINE, 2, "natural", 200, seed=0))
    total = torch.zeros_like(truth.emulated["combine"])
    for rank in range(4):
        w = load_moe_weights(ckpt, 2, 4, rank)
        assert w.expert_start == rank * 4 and w.n_local == 4
        w.input_scale_l1, w.input_scale_l2 = truth.weights.input_scale_l1, truth.weights.input_scale_l2
        plan = emu.plan_routes(truth.plan.ids, truth.plan.weights, w.expert_start, w.n_local)
        assert bool((plan.local[plan.local >= 0] < 4).all())  # global ids mapped to local ones
        total += emu.moe_routed(truth.x, w, plan)["combine"]
    single = truth.emulated["combine"]
    assert torch.allclose(total, single, rtol=1e-5, atol=1e-5 * float(single.abs().max()))


def test_w1_and_w3_global_scales_are_kept_apart(tmp_path):
    from fp4check.synth.writer import synthesize

    synthesize(tmp_path / "c", "tiny", "modelopt", defects=["w1-w3-scale-mismatch@L1.E0.w1"])
    truth = prepare(Checkpoint(tmp_path / "c"), MoECheck("t", PIPELINE, 1, "uniform", 64, seed=0))
    g = truth.weights.w13.global_scale.value
    assert float(g[0, 1] / g[0, 0]) > 4  # the stacked w13 carries both
    ref, got = truth.reference["l1"], truth.emulated["l1"].float()
    mask = truth.plan.ids == 0
    cos = torch.nn.functional.cosine_similarity(got[mask].flatten(), ref[mask].flatten(), dim=0)
    assert cos > 0.98


@given(
    st.sampled_from(["natural", "uniform", "skewed", "empty-experts", "hash"]),
    st.integers(1, 48),
    st.integers(0, 1000),
    st.sampled_from([1, 2, 3]),
)
@settings(max_examples=6, deadline=None)
def test_emulated_matches_the_loop_on_random_cases(tiny_modelopt, scenario, tokens, seed, layer):
    truth = prepare(Checkpoint(tiny_modelopt), MoECheck("t", PIPELINE, layer, scenario, tokens, seed=seed))
    loop, _ = _per_token_loop(truth)
    got = truth.emulated["combine"].double()
    assert torch.allclose(got, loop, rtol=0.02, atol=0.02 * float(loop.abs().max()))
