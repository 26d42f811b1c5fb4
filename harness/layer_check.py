"""The whole-layer check: attention, mHC and MoE of one decoder layer, prefill and decode.

Input: a seeded batch of token ids, their embeddings copied into the n_hc residual streams (what layer 0
sees; deeper layers get the same input so that one layer can be checked alone - `fp4check chain` gives
them their real input). The reference layer runs in the run's mode (served: FP8 KV rounding; exact).

Rows, each vs the reference and vs the emulated pipeline:
- attention stages (q, kv, compress, indexer, kv_write, kv_read, core, out), isolated (the backend's op
  on the reference's inputs, the cache pages written from the reference's kv) and propagated (the
  backend's own attention prefill on the reference attention input);
- the MoE stages (fp4check.moe_check) on the reference's MoE input;
- mHC (hc.attn_pre, hc.attn_post, hc.ffn_pre, hc.ffn_post) isolated, and the whole layer propagated
  (hc.* and out: the backend's layer on its own upstream from the same streams);
- decode: the last tokens decoded one at a time through the paged cache (SWA ring, compressed cache,
  compressor state), compared with the reference prefill's rows and with the backend's own prefill.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated import attention as emu_attn
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.kernels.registry import backend_needs, provides
from fp4check.layer_forward import (
    ATTENTION_FINE_OPS,
    attention_runs,
    backend_attention,
    backend_layer,
    embed_streams,
    load_layer,
    reference_layer,
    set_layer_scales,
)
from fp4check.metrics import bytes_match, compare, set_overlap
from fp4check.moe_check import PIPELINE, MoECheck, moe_rows
from fp4check.references.attention import fp8_kv
from fp4check.references.kv_layout import decode_kv, encode_kv
from fp4check.rows import make_row, skip_row
from fp4check.scenarios import make_inputs
from fp4check.thresholds import Thresholds

ATTN_STAGES = ("q", "kv", "compress", "indexer", "kv_write", "kv_read", "core", "out")
ISOLATED_OP = {
    "q": "attn_q",
    "kv": "attn_kv",
    "compress": "compressor",
    "indexer": "indexer",
    "kv_write": "kv_cache_write",
    "kv_read": "kv_cache_read",
    "core": "paged_attention",
    "out": "attn_out",
}
HC_STAGES = ("hc.attn_pre", "hc.attn_post", "hc.ffn_pre", "hc.ffn_post")
PHASES = ("prefill", "decode", "both")
DECODE_STEPS = 32  # decoded tokens at the end of the batch: crosses C4 windows, and a C128 one at 256


@dataclass
class LayerCheck:
    check: str  # "layer"
    layer: int
    tokens: int
    seed: int
    only: str | None = None  # None (whole layer) | "attn" | "moe"
    phase: str = "both"
    ref_mode: str = "served"
    act_scales: str = "auto"
    meta: dict = field(default_factory=dict)


def _stages_for(ratio: int) -> tuple[str, ...]:
    drop = {0: ("compress", "indexer"), 128: ("indexer",), 4: ()}[ratio]
    return tuple(s for s in ATTN_STAGES if s not in drop)


class _Ctx:
    """The reference and emulated results every row of one check is compared against."""

    def __init__(self, ckpt: Checkpoint, c: LayerCheck):
        self.ids = make_inputs(ckpt, "natural", c.layer, c.tokens, c.seed).token_ids
        self.lw = load_layer(ckpt, c.layer)
        self.streams = embed_streams(ckpt, self.ids)
        attn_only = c.only == "attn"
        self.ref = reference_layer(self.streams, self.lw, self.ids, c.ref_mode, attention_only=attn_only)
        c.meta["act_scales"] = (
            None if attn_only else set_layer_scales(self.lw, self.ref["moe_in"], self.ids, c.act_scales)
        )
        self.x = self.ref["attn_in"]
        self.positions = torch.arange(self.x.shape[0])
        self.seed = c.seed
        r = self.ref["attn"]
        self.rows_ref = torch.cat([r["kv"], r["entries"]])  # what the cache holds, before FP8
        self.emulated = EmulatedBackend()
        self._emu_attn = None
        self._emu_layer = None

    @property
    def emu_attn(self) -> dict:
        if self._emu_attn is None:
            self._emu_attn = dict(backend_attention(self.emulated, self.x, self.lw.attn, self.seed).stages)
        return self._emu_attn

    @property
    def emu_layer(self) -> dict:
        if self._emu_layer is None:
            self._emu_layer = backend_layer(self.emulated, self.streams, self.lw, self.ids, self.seed)
        return self._emu_layer

    def written_pool(self, writer) -> tuple[kvc.PagePool, torch.Tensor]:
        pool, slots = emu_attn.prefill_layout(self.x.shape[0], self.ref["attn"]["entries"].shape[0], self.seed)
        writer.kv_cache_write(pool.pages, pool.block, slots, self.rows_ref)
        return pool, slots

    def isolated(self, backend, stage: str):
        """The backend's op for `stage` on the reference's inputs."""
        w, r, pos = self.lw.attn, self.ref["attn"], self.positions
        if stage == "q":
            return backend.attn_q(self.x, w, pos)[1]
        if stage == "kv":
            return backend.attn_kv(self.x, w, pos)
        if stage == "compress":
            return backend.compressor(self.x, w)
        if stage == "indexer":
            return backend.indexer(self.x, r["qr"], w, pos)
        if stage == "kv_write":
            pool, slots = self.written_pool(backend)
            return kvc.cache_rows(pool.pages, pool.block, slots)
        if stage == "kv_read":
            pool, slots = self.written_pool(self.emulated)
            return backend.kv_cache_read(pool.pages, pool.block, slots)
        if stage == "core":
            pool, slots = self.written_pool(self.emulated)
            idx = r["idx"]
            return backend.paged_attention(
                r["q"], pool.pages, pool.block, torch.where(idx >= 0, slots[idx.clamp(min=0)], -1), w.params.sink
            )
        if stage == "out":
            return backend.attn_out(r["core"], w, pos)
        raise LookupError(f"stage {stage} has no isolated form")


def _attn_metrics(stage: str, got, want, ctx: _Ctx, propagated: bool) -> dict:
    """Metrics of one attention stage; `want` is the emulated output (vs emulated) or None (vs reference)."""
    r = ctx.ref["attn"]
    if stage == "indexer":
        scores, topk = got if isinstance(got, tuple) else (None, got)
        if want is None:
            want_scores, want_topk = r["index_scores"], r["index_topk"]
        else:
            want_scores, want_topk = want if isinstance(want, tuple) else (None, want)
        m = compare(scores.float(), want_scores.float()) if scores is not None and want_scores is not None else {}
        m["overlap"] = set_overlap(topk, want_topk)
        return m
    if stage == "kv_write":
        target = encode_kv(ctx.rows_ref) if want is None else want
        m = compare(decode_kv(got).float(), decode_kv(target).float())
        m.update(bytes_match(got, target))
        return m
    if stage == "kv_read":
        if want is None:
            want = fp8_kv(ctx.rows_ref, ctx.lw.attn.params.rope_dim) if not propagated else r["kv_cache"]
        m = compare(got.float(), want.float())
        m.update(bytes_match(got.to(torch.bfloat16), want.to(torch.bfloat16)))
        return m
    key = {"compress": "entries"}.get(stage, stage)
    return compare(got.float(), (r[key] if want is None else want).float())


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _shape(x) -> str:
    if isinstance(x, tuple):
        x = x[-1]
    return "x".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else ""


class _Rows:
    def __init__(self, base: dict, thresholds: Thresholds):
        self.base, self.th, self.rows = base, thresholds, []

    def add(self, sid: str, gate: str, against: str, propagation: str, metrics_fn, seconds=math.nan, shape="", **kw):
        if against == "emulated" and self.base["backend"] == "reference":
            return  # conformance with the NVFP4 pipeline is not a question the float reference answers
        metric, threshold = self.th.gate(gate, against)
        try:
            m = metrics_fn()
        except LookupError as err:
            self.rows.append(skip_row({**self.base, **kw}, sid, gate, str(err), against, propagation))
            return
        self.rows.append(
            make_row(
                {**self.base, **kw}, sid, gate, against, propagation, m, metric, threshold, seconds=seconds, shape=shape
            )
        )

    def error(self, sid: str, propagation: str, err: Exception, **kw) -> None:
        self.rows.append(
            make_row(
                {**self.base, **kw},
                sid,
                sid,
                "reference",
                propagation,
                {},
                "cosine",
                math.nan,
                status="error",
                message=f"{type(err).__name__}: {err}",
            )
        )

    def skip(self, sid: str, reason: str, propagation: str, **kw) -> None:
        self.rows.append(skip_row({**self.base, **kw}, sid, sid, reason, "reference", propagation))


def _attention_rows(out: _Rows, backend, ctx: _Ctx, c: LayerCheck) -> None:
    stages = _stages_for(ctx.lw.attn.params.ratio)
    pre = f"L{c.layer}.attn."
    for stage in stages:
        op = ISOLATED_OP[stage]
        if not provides(backend, op):
            out.skip(pre + stage, f"backend {backend.name} provides no {op}", "isolated")
            continue
        try:
            got, secs = _timed(ctx.isolated, backend, stage)
        except Exception as err:  # a kernel that raises is a result
            out.error(pre + stage, "isolated", err)
            continue
        emu = ctx.isolated(ctx.emulated, stage)
        for against, want in (("reference", None), ("emulated", emu)):
            out.add(
                pre + stage,
                f"attn.{stage}",
                against,
                "isolated",
                lambda g=got, w=want, s=stage: _attn_metrics(s, g, w, ctx, False),
                secs,
                _shape(got),
            )
    if not attention_runs(backend):
        out.skip(
            pre + "out",
            f"backend {backend.name} has no attention_forward nor the fine ops {', '.join(ATTENTION_FINE_OPS)}",
            "propagated",
        )
        return
    try:
        res, secs = _timed(backend_attention, backend, ctx.x, ctx.lw.attn, ctx.seed)
    except Exception as err:
        out.error(pre + "out", "propagated", err)
        return
    got_stages = dict(res.stages)
    got_stages.setdefault("out", res.out)
    for stage in stages:
        if stage not in got_stages:
            out.skip(pre + stage, f"backend {backend.name} returns no {stage} stage", "propagated")
            continue
        got = got_stages[stage]
        if stage == "indexer":
            got = (got_stages.get("index_scores"), got)
        for against in ("reference", "emulated"):
            want = None
            if against == "emulated":
                want = (
                    ctx.emu_attn[stage] if stage != "indexer" else (ctx.emu_attn["index_scores"], ctx.emu_attn[stage])
                )
            if stage == "kv_write" and against == "reference":
                continue  # propagated bytes encode the backend's own kv: compared with the emulated bytes only
            gate = "attn.kv_cache" if stage == "kv_read" and against == "reference" else f"attn.{stage}"
            out.add(
                pre + stage,
                gate,
                against,
                "propagated",
                lambda g=got, w=want, s=stage: _attn_metrics(s, g, w, ctx, True),
                secs,
                _shape(got),
            )


def _hc_rows(out: _Rows, backend, ctx: _Ctx, c: LayerCheck) -> None:
    from fp4check.layer_forward import hc_post_block, hc_pre_block

    lw, r = ctx.lw, ctx.ref
    iso = {
        "hc.attn_pre": lambda: hc_pre_block(backend, ctx.streams, lw, "attn")["input"],
        "hc.attn_post": lambda: hc_post_block(
            backend, ctx.streams, r["attn.out"], hc_pre_block(None, ctx.streams, lw, "attn")
        ),
        "hc.ffn_pre": lambda: hc_pre_block(backend, r["hc.attn_post"], lw, "ffn")["input"],
        "hc.ffn_post": lambda: hc_post_block(
            backend, r["hc.attn_post"], r["moe.out"], hc_pre_block(None, r["hc.attn_post"], lw, "ffn")
        ),
    }
    want_key = {"hc.ffn_post": "out"}
    for stage, fn in iso.items():
        got, secs = _timed(fn)
        want = r[want_key.get(stage, stage)]
        out.add(
            f"L{c.layer}.{stage}",
            stage,
            "reference",
            "isolated",
            lambda g=got, w=want: compare(g.float(), w.float()),
            secs,
            _shape(got),
        )
    if not attention_runs(backend) or not (provides(backend, "moe_forward") or provides(backend, "router")):
        out.skip(f"L{c.layer}.out", f"backend {backend.name} cannot run a whole layer", "propagated")
        return
    try:
        got, secs = _timed(backend_layer, backend, ctx.streams, lw, ctx.ids, ctx.seed)
    except Exception as err:
        out.error(f"L{c.layer}.out", "propagated", err)
        return
    for stage, key, gate in (
        ("hc.attn_pre", "hc.attn_pre", "hc.attn_pre"),
        ("hc.attn_post", "hc.attn_post", "hc.attn_post"),
        ("hc.ffn_pre", "hc.ffn_pre", "hc.ffn_pre"),
        ("out", "out", "layer.out"),
    ):
        for against, want in (("reference", r[key]), ("emulated", ctx.emu_layer[key])):
            out.add(
                f"L{c.layer}.{stage}",
                gate,
                against,
                "propagated",
                lambda g=got[key], w=want: compare(g.float(), w.float()),
                secs,
                _shape(got[key]),
            )


def decode_outputs(backend, ctx: _Ctx, steps: int) -> torch.Tensor:
    """The attention output of the last `steps` tokens decoded one at a time after a prefill of the rest."""
    dec = emu_attn.PagedDecoder(ctx.lw.attn, ops=backend, seed=ctx.seed)
    n = ctx.x.shape[0]
    dec.prefill(ctx.x[: n - steps])
    return torch.cat([dec.step(ctx.x[i : i + 1]) for i in range(n - steps, n)])


def _decode_rows(out: _Rows, backend, ctx: _Ctx, c: LayerCheck) -> None:
    sid = f"L{c.layer}.attn.decode"
    missing = [op for op in ATTENTION_FINE_OPS if not provides(backend, op)]
    if missing:
        out.skip(
            sid,
            f"backend {backend.name} provides no {', '.join(missing)} (decode runs the fine ops)",
            "propagated",
            phase="decode",
        )
        return
    n = ctx.x.shape[0]
    steps = min(DECODE_STEPS, n)
    try:
        got, secs = _timed(decode_outputs, backend, ctx, steps)
    except Exception as err:
        out.error(sid, "propagated", err, phase="decode")
        return
    prefill = backend_attention(backend, ctx.x, ctx.lw.attn, ctx.seed).out
    msg = {"tokens": n}
    for against, want in (("reference", ctx.ref["attn.out"]), ("prefill", prefill)):
        out.add(
            sid,
            "attn.decode",
            against,
            "propagated",
            lambda w=want: compare(got.float(), w[n - steps :].float()),
            secs,
            _shape(got),
            phase="decode",
            **msg,
        )


def layer_rows(ckpt: Checkpoint, backend, c: LayerCheck, thresholds: Thresholds, ctx_cols: dict) -> list[dict]:
    info = ckpt.config.layers[c.layer]
    base = {
        **ctx_cols,
        "check": c.check,
        "layer": c.layer,
        "layer_type": info.layer_type,
        "scenario": "natural",
        "seed": c.seed,
        "backend": backend.name,
        "tokens": c.tokens,
        "ref_mode": c.ref_mode,
        "phase": "prefill",
    }
    out = _Rows(base, thresholds)
    unmet = backend_needs(backend).unmet()
    if unmet:
        out.skip(f"L{c.layer}", f"backend {backend.name} cannot run here: {unmet}", "isolated")
        return out.rows
    ctx = _Ctx(ckpt, c)
    base["act_scales"] = c.meta["act_scales"]
    if c.phase in ("prefill", "both"):
        if c.only in (None, "attn"):
            _attention_rows(out, backend, ctx, c)
        if c.only in (None, "moe"):
            # the layer's MoE weights, scales set: a second load would hold a Pro layer's experts twice
            mc = MoECheck(
                "layer",
                PIPELINE,
                c.layer,
                "natural",
                c.tokens,
                c.seed,
                act_scales=c.act_scales,
                x=ctx.ref["moe_in"],
                weights=ctx.lw.moe,
                meta={"act_scales": c.meta["act_scales"]},
            )
            for row in moe_rows(ckpt, backend, mc, thresholds, ctx_cols):
                row.update({"check": c.check, "ref_mode": c.ref_mode, "phase": "prefill"})
                out.rows.append(row)
        if c.only is None:
            _hc_rows(out, backend, ctx, c)
    if c.phase in ("decode", "both") and c.only in (None, "attn"):
        _decode_rows(out, backend, ctx, c)
    return out.rows
