"""Attention references (prefill and decode), the FP8 KV record, the paged cache and the emulated attention."""

import math

import pytest
import torch

from fp4check.attn_weights import load_attention_weights
from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import attention as emu
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.metrics import compare
from fp4check.references import attention as ref
from fp4check.references.common import rms_norm
from fp4check.references.kv_layout import TOKEN_BYTES, decode_kv, encode_kv, page_bytes
from fp4check.references.sparse_attention import sparse_attention, top_k_stable

LAYERS = {"C128A": 0, "C4A": 1, "SWA": 3}  # the tiny checkpoint's schedule


def _inputs(ckpt: Checkpoint, layer: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ckpt.config.vocab_size, (n,), generator=g)
    h = ckpt.weight("embed").dequantize()[ids]
    return rms_norm(h, ckpt.weight(f"layers.{layer}.attn_norm").dequantize(), 1e-6).to(torch.bfloat16)


@pytest.fixture(scope="module")
def ckpt(tiny_modelopt):
    return Checkpoint(tiny_modelopt)


# --- the FP8 KV record (closed forms) --------------------------------------------------------------


def test_kv_record_bytes_closed_form():
    kv = torch.zeros(1, 512, dtype=torch.bfloat16)
    kv[0, :64] = 1.0  # tile 0: amax 1 -> scale 2^ceil(log2(1/448)) = 2^-8 -> byte 119; 1/2^-8 = 256 = e4m3 0x78
    kv[0, 64:128] = -3.0  # tile 1: amax 3 -> 2^ceil(log2(3/448)) = 2^-7 -> byte 120; -3*128 = -384 = e4m3 0xF8+?
    kv[0, 448] = 1.0  # rope dims stay bf16: 0x3F80, little-endian 0x80 0x3F
    rec = encode_kv(kv)[0]
    assert rec.shape == (TOKEN_BYTES,) == (584,)
    assert rec[:64].tolist() == [0x78] * 64
    # -384 = -1.5 * 2^8: sign 1, exponent 8 + 7 = 15 (0b1111), mantissa 0b100 -> 0b1_1111_100 = 0xFC
    assert rec[64:128].tolist() == [0xFC] * 64
    assert rec[128:448].tolist() == [0] * 320
    assert rec[448:450].tolist() == [0x80, 0x3F] and rec[450:576].tolist() == [0] * 126
    # zero tiles: amax floor 1e-4 -> 2^ceil(log2(1e-4/448)) = 2^-22 -> byte 105
    assert rec[576:583].tolist() == [119, 120, 105, 105, 105, 105, 105] and rec[583] == 0
    back = decode_kv(rec.unsqueeze(0))
    assert torch.equal(back, kv)


def test_kv_record_round_trip_equals_the_served_reference():
    g = torch.Generator().manual_seed(3)
    kv = (torch.randn(40, 512, generator=g) * torch.logspace(-3, 2, 40).unsqueeze(1)).to(torch.bfloat16)
    assert torch.equal(decode_kv(encode_kv(kv)), ref.fp8_kv(kv, 64))
    # e4m3 values times powers of two are bf16 numbers: the simulation is exact in bf16
    assert torch.equal(ref.fp8_kv(kv, 64).float().to(torch.bfloat16), ref.fp8_kv(kv, 64))


def test_page_layout_records_then_scales():
    assert page_bytes(64) == 37440 and page_bytes(64) % 576 == 0 and page_bytes(64) >= 64 * 584
    pool = kvc.PagePool(3, 64, seed=0)
    table = pool.table(2)
    kv = torch.randn(2, 512).to(torch.bfloat16)
    slots = kvc.slots_of(table, 64, torch.tensor([5, 70]))  # block 0 offset 5, block 1 offset 6
    kvc.kv_cache_write(pool.pages, 64, slots, kv)
    enc = encode_kv(kv)
    for i, (blk, off) in enumerate(((0, 5), (1, 6))):
        page = pool.pages[int(table[blk])]
        assert torch.equal(page[off * 576 : off * 576 + 576], enc[i, :576])
        assert torch.equal(page[64 * 576 + off * 8 : 64 * 576 + off * 8 + 8], enc[i, 576:])
    assert torch.equal(kvc.kv_cache_read(pool.pages, 64, slots), decode_kv(enc))
    # a slot never written reads as NaN (poisoned pages)
    unwritten = kvc.slots_of(table, 64, torch.tensor([6]))
    assert torch.isnan(kvc.kv_cache_read(pool.pages, 64, unwritten).float()).any()


def test_block_tables_are_not_the_identity():
    pool = kvc.PagePool(16, 64, seed=0)
    assert pool.table(16).tolist() != list(range(16))


def test_paged_attention_equals_sparse_attention_on_fp8_kv():
    g = torch.Generator().manual_seed(1)
    n, t, h = 150, 9, 2
    kv = torch.randn(n, 512, generator=g).to(torch.bfloat16)
    q = torch.randn(t, h, 512, generator=g).to(torch.bfloat16)
    idx = torch.randint(-1, n, (t, 20), generator=g)
    sink = torch.randn(h, generator=g)
    pool = kvc.PagePool(4, 64, seed=2)
    slots = kvc.slots_of(pool.table(3), 64, torch.arange(n))
    kvc.kv_cache_write(pool.pages, 64, slots, kv)
    got = kvc.paged_attention(q, pool.pages, 64, torch.where(idx >= 0, slots[idx.clamp(min=0)], -1), sink)
    want = sparse_attention(q, ref.fp8_kv(kv, 64), idx, sink, 512**-0.5)
    assert torch.allclose(got.float(), want, atol=1e-2, rtol=1e-2)


def test_top_k_stable_breaks_ties_to_the_lower_index():
    vals, idx = top_k_stable(torch.tensor([[0.0, 2.0, 0.0, 0.0, 1.0]]), 3)
    assert idx.tolist() == [[1, 4, 0]] and vals.tolist() == [[2.0, 1.0, 0.0]]


# --- prefill and decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type", sorted(LAYERS))
def test_reference_decode_equals_prefill_rows(ckpt, layer_type):
    """Decoding token t (window, compressor state, entries so far) gives row t of the prefill, across
    compression windows (a C128 entry completes at t = 255) and past the 128-token window."""
    layer = LAYERS[layer_type]
    p = load_attention_weights(ckpt, layer).params
    x = _inputs(ckpt, layer, 260)
    for mode in ("served", "exact"):
        pre = ref.attention_prefill(x, p, mode)
        st = ref.DecodeState(p, mode)
        dec = torch.cat([st.step(x[i : i + 1])["out"] for i in range(x.shape[0])])
        m = compare(dec.float(), pre["out"].float())
        assert m["cosine"] > 0.99999, (layer_type, mode, m)
        if p.ratio:
            assert pre["entries"].shape[0] == 260 // p.ratio


def test_served_differs_from_exact_by_the_fp8_kv_rounding_only(ckpt):
    p = load_attention_weights(ckpt, LAYERS["C4A"]).params
    x = _inputs(ckpt, LAYERS["C4A"], 64)
    served, exact = ref.attention_prefill(x, p, "served"), ref.attention_prefill(x, p, "exact")
    assert torch.equal(served["q"], exact["q"]) and torch.equal(served["kv"], exact["kv"])
    assert torch.equal(served["kv_cache"], ref.fp8_kv(exact["kv_cache"], 64))
    assert not torch.equal(served["out"], exact["out"])
    assert compare(served["out"].float(), exact["out"].float())["cosine"] > 0.999


@pytest.mark.parametrize("layer_type", sorted(LAYERS))
def test_emulated_attention_close_to_the_served_reference(ckpt, layer_type):
    layer = LAYERS[layer_type]
    w = load_attention_weights(ckpt, layer)
    x = _inputs(ckpt, layer, 200)
    want = ref.attention_prefill(x, w.params, "served")
    got = emu.attention_forward(x, w, torch.arange(200))
    for stage, key in (("q", "q"), ("kv", "kv"), ("core", "core"), ("out", "out")):
        cos = compare(got.stages[stage].float(), want[key].float())["cosine"]
        assert 0.99 < cos < 1.0, (stage, cos)  # FP8 projections: close, never identical
    assert got.stages["kv_write"].shape == (200 + want["entries"].shape[0], 584)


def test_emulated_decode_over_the_paged_cache_equals_its_prefill(ckpt):
    for layer_type in ("C4A", "SWA"):
        w = load_attention_weights(ckpt, LAYERS[layer_type])
        x = _inputs(ckpt, LAYERS[layer_type], 180)
        pre = emu.attention_forward(x, w, torch.arange(180)).out
        dec = emu.PagedDecoder(w)
        dec.prefill(x[:140])  # the ring has wrapped: decode reads slots position % 128
        got = torch.cat([dec.step(x[i : i + 1]) for i in range(140, 180)])
        assert compare(got.float(), pre[140:].float())["cosine"] > 0.99999, layer_type


@pytest.mark.parametrize("n", [1, 3])
def test_one_token_and_a_prompt_shorter_than_a_window(ckpt, n):
    p = load_attention_weights(ckpt, LAYERS["C4A"]).params
    x = _inputs(ckpt, LAYERS["C4A"], n)
    out = ref.attention_prefill(x, p, "served")
    assert out["entries"].shape[0] == 0 and out["out"].shape == (n, 256)
    assert torch.isfinite(out["out"].float()).all() and out["out"].abs().sum() > 0
    assert (out["index_topk"] == -1).all() or out["index_topk"].numel() == 0


def test_sink_only_adds_to_the_denominator():
    q = torch.ones(1, 1, 4)
    kv = torch.ones(1, 4)
    idx = torch.tensor([[0]])
    o = sparse_attention(q, kv, idx, torch.tensor([0.0]), 0.5)  # logit 2: weight e^2 / (e^2 + e^0)
    assert torch.allclose(o, torch.full((1, 1, 4), math.exp(2) / (math.exp(2) + 1)))


def test_empty_slots_never_read_poisoned_pages():
    """-1 slots (a window reaching before token 0) must not read slot 0: an unwritten, NaN-poisoned page
    times a zero weight is still NaN (this broke the SWA layer of a 140-token chain once)."""
    pool = kvc.PagePool(4, 64, seed=0)
    table = pool.table(1)
    while int(table[0]) == 0:  # the written page must not be physical page 0
        table = pool.table(1)
    slots = kvc.slots_of(table, 64, torch.arange(3))
    kvc.kv_cache_write(pool.pages, 64, slots, torch.randn(3, 512).to(torch.bfloat16))
    q = torch.randn(1, 2, 512).to(torch.bfloat16)
    out = kvc.paged_attention(q, pool.pages, 64, torch.tensor([[-1, -1, int(slots[0]), int(slots[2])]]), torch.zeros(2))
    assert torch.isfinite(out.float()).all()
