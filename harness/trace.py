"""Where a NaN (or a divergence) is first produced, and why.

The chain runs from the embeddings through layers A..B on the backend (each layer on the backend's own
streams) and on the reference side by side; layers before A run on the reference only so both enter A
with the same streams. Every stage of every layer records finite or not, NaN/Inf counts, amax and rms on
both sides, in the order data flows:

    hc.attn_pre -> attn.{q, kv, compress, indexer, kv_write, kv_read, core, out} -> hc.attn_post
    -> hc.ffn_pre -> moe.{route, quant_l1, l1, act, quant_l2, l2, combine, shared, out} -> out

The producer is the first stage whose output is non-finite while every input it reads is finite (the
UPSTREAM graph below); a non-finite stage with a non-finite input is a propagator. The producer is then
diagnosed (fp4check.trace_diagnosis): rerun on the same inputs by the exact pipeline, its tensors
audited, the tokens / heads / experts carrying the NaN narrowed down, one sentence naming the cause.

With --metric cosine the same search looks for the first stage (layer order, then data-flow order) whose
isolated cosine vs the reference falls below the threshold, over the whole-layer check's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.layer_forward import (
    attention_runs,
    backend_attention,
    embed_streams,
    hc_post_block,
    hc_pre_block,
    load_layer,
    norm_bf16,
    reference_layer,
)
from fp4check.moe_check import PIPELINE, MoECheck, prepare, run_propagated
from fp4check.scenarios import make_inputs
from fp4check.trace_diagnosis import cause_sentence, diagnose, nan_count, tensor_of

ATTN_TRACE = ("q", "kv", "compress", "indexer", "kv_write", "kv_read", "core", "out")
# every stage of a layer in data-flow order, as (block, stage); "layer" is the layer's output streams
LAYER_TRACE = (
    (("hc", "attn_pre"),)
    + tuple(("attn", s) for s in ATTN_TRACE)
    + (("hc", "attn_post"), ("hc", "ffn_pre"))
    + tuple(("moe", s) for s in PIPELINE)
    + (("layer", "out"),)
)
# the stages each stage reads ("in": the streams entering the layer)
UPSTREAM = {
    "hc.attn_pre": ("in",),
    "attn.q": ("hc.attn_pre",),
    "attn.kv": ("hc.attn_pre",),
    "attn.compress": ("hc.attn_pre",),
    "attn.indexer": ("hc.attn_pre", "attn.q"),  # it reads qr, the low-rank query q is made from
    "attn.kv_write": ("attn.kv", "attn.compress"),
    "attn.kv_read": ("attn.kv_write",),
    "attn.core": ("attn.q", "attn.kv_read", "attn.indexer"),
    "attn.out": ("attn.core",),
    "hc.attn_post": ("in", "attn.out"),
    "hc.ffn_pre": ("hc.attn_post",),
    "moe.route": ("hc.ffn_pre",),
    "moe.quant_l1": ("hc.ffn_pre",),
    "moe.l1": ("moe.quant_l1",),
    "moe.act": ("moe.l1",),
    "moe.quant_l2": ("moe.act",),
    "moe.l2": ("moe.quant_l2",),
    "moe.combine": ("moe.l2", "moe.route"),
    "moe.shared": ("hc.ffn_pre",),
    "moe.out": ("moe.combine", "moe.shared"),
    "out": ("hc.attn_post", "moe.out"),
}
# the reference attention's name for each traced stage (the indexer is traced by its scores: top-k
# indices are integers and cannot be NaN, the scores they come from can)
REF_ATTN = {"compress": "entries", "indexer": "index_scores", "kv_write": "kv_cache", "kv_read": "kv_cache"}


def stage_key(block: str, stage: str) -> str:
    return stage if block == "layer" else f"{block}.{stage}"


@dataclass
class StageStat:
    layer: int
    block: str  # attn | hc | moe | layer
    stage: str
    finite: bool
    nan: int
    inf: int
    amax: float
    rms: float
    ref_finite: bool
    ref_nan: int
    ref_amax: float
    role: str = ""  # producer | propagator | ""

    @property
    def key(self) -> str:
        return stage_key(self.block, self.stage)

    @property
    def sid(self) -> str:
        return f"L{self.layer}.{self.key}"

    def as_dict(self) -> dict:
        return {**self.__dict__, "sid": self.sid}


@dataclass
class LayerRun:
    """What the backend computed in one layer, kept for the producer's diagnosis."""

    lw: object
    streams_in: torch.Tensor
    attn_in: torch.Tensor
    attn: dict  # the backend's attention stages
    moe: dict  # the backend's MoE stages
    truth: object  # the MoE check's truth on the backend's MoE input
    flat: dict  # every traced stage by key
    n_tokens: int
    seed: int


@dataclass
class TraceResult:
    stats: list[StageStat] = field(default_factory=list)
    producer: StageStat | None = None
    diagnosis: dict = field(default_factory=dict)
    cause: str = "no NaN or Inf in any stage"
    notes: list[str] = field(default_factory=list)


def _stat(layer: int, block: str, stage: str, got, want) -> StageStat:
    t, r = tensor_of(got), tensor_of(want)
    nan, inf, amax, rms = nan_count(t)
    r_nan, _, r_amax, _ = nan_count(r) if r is not None else (0, 0, float("nan"), 0.0)
    return StageStat(
        layer,
        block,
        stage,
        nan == 0 and inf == 0,
        nan,
        inf,
        amax,
        rms,
        r is None or bool(torch.isfinite(r).all()),
        r_nan,
        r_amax,
    )


def _moe_truth(ckpt: Checkpoint, layer: int, x, scenario, tokens, seed, act_scales, weights=None):
    c = MoECheck("nan-trace", PIPELINE, layer, scenario, tokens, seed, act_scales=act_scales, x=x, weights=weights)
    return prepare(ckpt, c)


def _backend_layer(backend, ckpt, n, lw, streams, ref_truth, scenario, tokens, seed) -> LayerRun:
    """One layer on the backend, every stage kept: attention's stages, the MoE block's stages (its
    moe_forward or fine ops on the backend's own MoE input, with the reference's activation scales)."""
    flat: dict = {}
    pre = hc_pre_block(backend, streams, lw, "attn")
    flat["hc.attn_pre"] = pre["input"]
    attn_in = norm_bf16(pre["input"], lw.attn_norm, lw.eps)
    # a MoE-only plugin: its layers' attention runs on the emulated ops (named in the trace's notes)
    attn_ops = backend if attention_runs(backend) else EmulatedBackend()
    res = backend_attention(attn_ops, attn_in, lw.attn, seed)
    attn = dict(res.stages)
    attn.setdefault("out", res.out)
    for s in ATTN_TRACE:
        key = "index_scores" if s == "indexer" else s
        if key in attn:
            flat[f"attn.{s}"] = attn[key]
    flat["hc.attn_post"] = hc_post_block(backend, streams, res.out, pre)
    pre2 = hc_pre_block(backend, flat["hc.attn_post"], lw, "ffn")
    flat["hc.ffn_pre"] = pre2["input"]
    moe_in = norm_bf16(pre2["input"], lw.ffn_norm, lw.eps)
    truth = _moe_truth(ckpt, n, moe_in, scenario, tokens, seed, "auto", weights=ref_truth.weights)
    moe, _, _ = run_propagated(backend, truth)
    for s in PIPELINE:
        if s in moe:
            flat[f"moe.{s}"] = moe[s]
    flat["out"] = hc_post_block(backend, flat["hc.attn_post"], moe["out"], pre2)
    return LayerRun(lw, streams, attn_in, attn, moe, truth, flat, attn_in.shape[0], seed)


def _reference_flat(ref: dict, truth) -> dict:
    flat = {k: ref[k] for k in ("hc.attn_pre", "hc.attn_post", "hc.ffn_pre", "out")}
    for s in ATTN_TRACE:
        key = REF_ATTN.get(s, s)
        if key in ref["attn"]:
            flat[f"attn.{s}"] = ref["attn"][key]
    for s in PIPELINE:
        want = truth.emulated[s] if s.startswith("quant") else truth.reference.get(s)
        if want is not None:
            flat[f"moe.{s}"] = want
    return flat


def nan_trace(
    ckpt: Checkpoint,
    backend,
    layers: list[int],
    scenario: str,
    tokens: int,
    seed: int,
    act_scales: str = "auto",
    ref_mode: str = "served",
    progress=None,
) -> TraceResult:
    res = TraceResult()
    if not attention_runs(backend):
        res.notes.append(f"backend {backend.name} has no attention ops: attention stages ran on the emulated ops")
    first, last = layers[0], layers[-1]
    ids = make_inputs(ckpt, scenario, first, tokens, seed).token_ids
    ref_s = embed_streams(ckpt, ids)
    for n in range(first):  # the layers before the range: reference only
        ref_s = reference_layer(ref_s, load_layer(ckpt, n), ids, ref_mode)["out"]
    got_s = ref_s
    in_stat = _stat(first, "layer", "in", got_s, ref_s)
    for n in range(first, last + 1):
        lw = load_layer(ckpt, n)
        ref = reference_layer(ref_s, lw, ids, ref_mode)
        ref_truth = _moe_truth(ckpt, n, ref["moe_in"], scenario, tokens, seed, act_scales)
        run = _backend_layer(backend, ckpt, n, lw, got_s, ref_truth, scenario, tokens, seed)
        want = _reference_flat(ref, ref_truth)
        seen = {"in": in_stat}
        for block, stage in LAYER_TRACE:
            key = stage_key(block, stage)
            if key not in run.flat:
                continue
            st = _stat(n, block, stage, run.flat[key], want.get(key))
            if not st.finite:
                ups = [seen[u] for u in UPSTREAM[key] if u in seen]
                st.role = "propagator" if any(not u.finite for u in ups) else "producer"
                if st.role == "producer" and res.producer is None:
                    res.producer = st
                    res.diagnosis = diagnose(ckpt, st, run)
                    res.cause = cause_sentence(st, res.diagnosis, backend.name)
            seen[key] = st
            res.stats.append(st)
        in_stat = seen["out"]
        ref_s, got_s = ref["out"], run.flat["out"]
        if progress is not None:
            progress(n - first + 1, last - first + 1, f"layer {n}")
    return res


def trace_order(stage_id: str) -> tuple[int, int]:
    """(layer, data-flow position) of a row's stage id such as L2.attn.q, L2.moe.l1, L2.hc.ffn_pre, L2.out."""
    layer, _, key = stage_id.partition(".")
    keys = [stage_key(b, s) for b, s in LAYER_TRACE]
    return int(layer[1:]), keys.index(key) if key in keys else len(keys)


def divergence_trace(rows: list[dict], threshold: float) -> dict | None:
    """The first stage (layer, then data-flow order) whose isolated cosine vs the reference is below threshold."""
    cands = [
        r
        for r in rows
        if r.get("compared_to") == "reference"
        and r.get("propagation") == "isolated"
        and r.get("cosine") is not None
        and r["stage"].startswith("L")
        and not (r["cosine"] >= threshold)
    ]
    return min(cands, key=lambda r: trace_order(r["stage"])) if cands else None


def tree_lines(res: TraceResult) -> list[str]:
    """The path as a tree: layer -> block -> stage, with what each stage did."""
    lines: list[str] = []
    last_layer, last_block = None, None
    for st in res.stats:
        if st.layer != last_layer:
            bad = any(not s.finite for s in res.stats if s.layer == st.layer)
            lines.append(f"L{st.layer} {'NaN' if bad else 'finite'}")
            last_layer, last_block = st.layer, None
        if st.block != last_block:
            lines.append(f"  {st.block}")
            last_block = st.block
        mark = {"producer": "PRODUCER", "propagator": "propagates"}.get(st.role, "ok")
        counts = f" nan={st.nan} inf={st.inf}" if not st.finite else ""
        lines.append(f"    {st.stage:<9} {mark}{counts} amax={st.amax:.4g} ref_amax={st.ref_amax:.4g}")
    return lines
