"""Why a stage produced the first NaN: the stage rerun on the backend's own inputs by the exact pipeline
(the emulated backend's ops, or the reference's mHC), the weights and scales the stage uses audited,
and the tokens / experts / heads that carry the NaN. One sentence names the likely cause.

The rerun separates a kernel bug (the exact pipeline turns the same inputs into finite values) from the
data (it makes NaN too: a NaN weight, a NaN code in a scale, an input scale far too small).
"""

from __future__ import annotations

import math

import torch

from fp4check.audit import Finding, _input_finding, _scale_findings
from fp4check.checkpoint import Checkpoint
from fp4check.kernels.contract import NVFP4Activation
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated import attention as emu_attn
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.kernels.emulated import moe as emu
from fp4check.kernels.emulated.shared import shared_expert as emu_shared
from fp4check.layer_forward import hc_post_block, hc_pre_block
from fp4check.references.attention import key_set
from fp4check.references.kv_layout import decode_kv
from fp4check.references.sparse_attention import hca_indices, window_indices

# the MoE families whose weights and scales a stage uses
MOE_FAMILIES = {"quant_l1": ("w1", "w3"), "l1": ("w1", "w3"), "quant_l2": ("w2",), "l2": ("w2",)}
# per (block, stage): the tensors of layers.N. it reads (projections audited as stored, the rest for
# non-finite values); the norm in front of a block belongs to the block's first stages
STAGE_TENSORS = {
    ("attn", "q"): ("attn_norm", "attn.wq_a", "attn.q_norm", "attn.wq_b"),
    ("attn", "kv"): ("attn_norm", "attn.wkv", "attn.kv_norm"),
    ("attn", "compress"): ("attn_norm",) + tuple(f"attn.compressor.{n}" for n in ("wkv", "wgate", "ape", "norm")),
    ("attn", "indexer"): ("attn_norm", "attn.indexer.wq_b", "attn.indexer.weights_proj")
    + tuple(f"attn.indexer.compressor.{n}" for n in ("wkv", "wgate", "ape", "norm")),
    ("attn", "core"): ("attn.attn_sink",),
    ("attn", "out"): ("attn.wo_a", "attn.wo_b"),
    ("hc", "attn_pre"): ("hc_attn_fn", "hc_attn_base", "hc_attn_scale"),
    ("hc", "attn_post"): ("hc_attn_fn", "hc_attn_base", "hc_attn_scale"),
    ("hc", "ffn_pre"): ("hc_ffn_fn", "hc_ffn_base", "hc_ffn_scale"),
    ("layer", "out"): ("hc_ffn_fn", "hc_ffn_base", "hc_ffn_scale"),
    ("moe", "route"): ("ffn_norm", "ffn.gate"),
    ("moe", "quant_l1"): ("ffn_norm",),
    ("moe", "shared"): ("ffn_norm",),
}


def tensor_of(value) -> torch.Tensor | None:
    """A stage output as float32 values: NVFP4 activations decoded, cache records decoded, routes' weights."""
    if isinstance(value, NVFP4Activation):
        return emu.dequantize_activation(value)
    if isinstance(value, tuple):
        return value[1].float()
    if isinstance(value, torch.Tensor):
        return decode_kv(value).float() if value.dtype == torch.uint8 else value.float()
    return None


def _rows_from_slots(slots: torch.Tensor, plan) -> torch.Tensor:
    rows = torch.zeros(plan.rows, slots.shape[-1], dtype=slots.dtype)
    m = plan.row_of >= 0
    rows[plan.row_of[m]] = slots[m]
    return rows


def rerun_moe(stage: str, stages: dict, truth) -> torch.Tensor | None:
    """A MoE stage recomputed by the exact NVFP4 pipeline on the backend's own upstream outputs."""
    w, plan = truth.weights, stages.get("plan") or truth.plan
    if stage == "quant_l1":
        return emu.dequantize_activation(
            emu.quantize_activation(emu.gather_rows(truth.x, plan), w.input_scale_l1.to_encode())
        )
    if stage == "l1" and isinstance(stages.get("quant_l1"), NVFP4Activation):
        return emu.grouped_gemm_nvfp4(stages["quant_l1"], w.w13, plan.offsets).float()
    if stage == "act" and "l1" in stages:
        return emu.swiglu_clamp(_rows_from_slots(stages["l1"], plan), w.swiglu_limit).float()
    if stage == "quant_l2" and "act" in stages:
        a = emu.quantize_activation(_rows_from_slots(stages["act"], plan), w.input_scale_l2.to_encode())
        return emu.dequantize_activation(a)
    if stage == "l2" and isinstance(stages.get("quant_l2"), NVFP4Activation):
        return emu.grouped_gemm_nvfp4(stages["quant_l2"], w.w2, plan.offsets).float()
    if stage == "combine" and "l2" in stages:
        return emu.moe_scatter(_rows_from_slots(stages["l2"], plan), plan)
    if stage == "shared":
        return emu_shared(truth.x, w).float()
    return None


def rerun_attention(stage: str, run) -> torch.Tensor | None:
    """An attention stage recomputed by the emulated ops on the backend's own inputs (its attention input,
    its kv rows, its q and top-k, its core output)."""
    ops, w, x, got = EmulatedBackend(), run.lw.attn, run.attn_in, run.attn
    p, t = w.params, x.shape[0]
    pos = torch.arange(t)
    if stage == "q":
        return ops.attn_q(x, w, pos)[1]
    if stage == "kv":
        return ops.attn_kv(x, w, pos)
    if stage == "compress":
        return ops.compressor(x, w)
    if stage == "indexer":
        return ops.indexer(x, ops.attn_q(x, w, pos)[0], w, pos)[0]
    if stage == "out":
        return ops.attn_out(got["core"], w, pos)
    entries = got.get("compress", got["kv"][:0])
    pool, slots = emu_attn.prefill_layout(t, entries.shape[0], run.seed)
    ops.kv_cache_write(pool.pages, pool.block, slots, torch.cat([got["kv"], entries]))
    if stage == "kv_write":
        return decode_kv(kvc.cache_rows(pool.pages, pool.block, slots))
    if stage == "kv_read":
        return ops.kv_cache_read(pool.pages, pool.block, slots)
    if stage == "core":
        extra = got.get("indexer") if p.ratio == 4 else (hca_indices(t, p.ratio, entries.shape[0]) if p.ratio else None)
        idx = key_set(window_indices(t, p.window), extra, t)
        return ops.paged_attention(
            got["q"], pool.pages, pool.block, torch.where(idx >= 0, slots[idx.clamp(min=0)], -1), p.sink
        )
    return None


def rerun_hc(stage: str, run) -> torch.Tensor:
    """An mHC stage recomputed by the reference on the backend's own inputs."""
    lw, s = run.lw, run.flat
    if stage == "attn_pre":
        return hc_pre_block(None, run.streams_in, lw, "attn")["input"]
    if stage == "attn_post":
        return hc_post_block(None, run.streams_in, s["attn.out"], hc_pre_block(None, run.streams_in, lw, "attn"))
    if stage == "ffn_pre":
        return hc_pre_block(None, s["hc.attn_post"], lw, "ffn")["input"]
    return hc_post_block(None, s["hc.attn_post"], s["moe.out"], hc_pre_block(None, s["hc.attn_post"], lw, "ffn"))


def where_moe(stage: str, got, plan) -> dict:
    """Tokens and experts whose values are non-finite."""
    t = tensor_of(got)
    if t is None:
        return {}
    bad = ~torch.isfinite(t)
    if stage in ("quant_l1", "quant_l2") and plan is not None:  # padded rows -> (token, expert)
        rows = bad.any(-1).nonzero()[:, 0]
        tokens = plan.token_of[rows]
        expert = torch.searchsorted(plan.offsets[1:], rows, right=True)
        return {"tokens": sorted(set(tokens[tokens >= 0].tolist())), "experts": sorted(set(expert.tolist()))}
    if t.dim() == 3 and plan is not None:  # [T, k, N] per slot
        tok, slot = bad.any(-1).nonzero(as_tuple=True)
        return {"tokens": sorted(set(tok.tolist())), "experts": sorted(set(plan.ids[tok, slot].tolist()))}
    return {"tokens": sorted(set(bad.reshape(bad.shape[0], -1).any(-1).nonzero()[:, 0].tolist()))}


def where_rows(stage: str, got, n_tokens: int) -> dict:
    """Tokens (and heads, compressed entries) whose values are non-finite, for attention and mHC stages."""
    t = tensor_of(got)
    bad = ~torch.isfinite(t)
    rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero()[:, 0]
    out = {"tokens": sorted(set(rows[rows < n_tokens].tolist()))}
    if stage in ("kv_write", "kv_read", "compress"):  # cache rows: tokens, then compressed entries
        first = 0 if stage == "compress" else n_tokens
        out["entries"] = sorted(set((rows[rows >= first] - first).tolist()))
        if stage == "compress":
            out["tokens"] = []
    if stage in ("q", "core") and t.dim() == 3:
        out["heads"] = sorted(set(bad.any(-1).nonzero()[:, 1].tolist()))
    return out


def tensor_findings(ckpt: Checkpoint, layer: int, names: tuple[str, ...]) -> list[Finding]:
    """Each named tensor of the layer audited: scales and NaN codes as stored, then non-finite values."""
    out: list[Finding] = []
    have = set(ckpt.families())
    for name in names:
        fam = f"layers.{layer}.{name}"
        if fam not in have:
            continue  # a tensor this layer type does not have
        w = ckpt.weight(fam)
        found = _scale_findings(fam, w)
        if not found:
            v = w.dequantize()
            n = int((~torch.isfinite(v)).sum())
            if n:
                found = [Finding("critical", fam, "NaN weight", f"{n} value(s) are NaN or Inf after dequantization")]
        out += found
    return out


def diagnose(ckpt: Checkpoint, producer, run) -> dict:
    """Rerun, audit and locate the producer; `run` is the layer's record (fp4check.trace.LayerRun)."""
    block, stage, layer = producer.block, producer.stage, producer.layer
    if block == "moe":
        got, truth = run.moe, run.truth
        exact = rerun_moe(stage, got, truth)
        where = where_moe(stage, got.get(stage), got.get("plan") or truth.plan)
    elif block == "attn":
        exact = rerun_attention(stage, run)
        where = where_rows(stage, run.attn[stage] if stage != "indexer" else run.attn["index_scores"], run.n_tokens)
    else:
        exact = rerun_hc(stage, run)
        where = where_rows(stage, run.flat[producer.key], run.n_tokens)
    findings = tensor_findings(ckpt, layer, STAGE_TENSORS.get((block, stage), ()))
    for suffix in MOE_FAMILIES.get(stage, ()) if block == "moe" else ():
        for e in where.get("experts", [])[:64] or range(ckpt.config.n_routed_experts):
            fam = f"layers.{layer}.ffn.experts.{e}.{suffix}"
            w = ckpt.weight(fam)
            findings += _scale_findings(fam, w)
            if stage in ("quant_l1", "quant_l2"):
                act = run.truth.x.float() if suffix != "w2" else run.truth.reference["act"].reshape(-1, w.shape[1])
                f = _input_finding(fam, w, act)
                if f is not None:
                    findings.append(f)
    rows = [f.as_dict() for f in findings]
    return {
        "exact_pipeline_finite": None if exact is None else bool(torch.isfinite(tensor_of(exact)).all()),
        "where": where,
        "findings": sorted(rows, key=lambda f: (f["severity"] != "critical", -(f["value"] or 0))),
    }


def _list(name: str, values: list) -> str:
    return f"{name} {values[:8]}{'...' if len(values) > 8 else ''}" if values else ""


def cause_sentence(p, d: dict, backend: str) -> str:
    crit = [f for f in d["findings"] if f["severity"] == "critical"]
    where = d["where"]
    who = ", ".join(x for x in (_list(k, where.get(k, [])) for k in ("experts", "heads", "entries")) if x)
    who = f" ({who})" if who else ""
    head = f"{p.sid} produces the first NaN{who}"
    overflow = [f for f in crit if f["kind"] == "input scale overflow"]
    if overflow:
        f = overflow[0]
        return (
            f"{head}: the checkpoint's input scale of {f['family']} is about {f['value']:.0f}x too small for the "
            f"activations it meets, so block scales overflow e4m3"
            f"{' and the backend casts them to NaN' if d['exact_pipeline_finite'] else ''}"
        )
    if crit:
        f = crit[0]
        return f"{head}: {f['family']} is bad data ({f['kind']}: {f['detail']})"
    if d["exact_pipeline_finite"]:
        return (
            f"{head} from finite inputs that the exact pipeline turns into finite values: a bug in backend "
            f"{backend}'s {p.block}.{p.stage} kernel"
        )
    if d["exact_pipeline_finite"] is False:
        return f"{head}, and so does the exact pipeline on the same inputs: the data"
    return head


def nan_count(t: torch.Tensor) -> tuple[int, int, float, float]:
    """(NaN count, Inf count, amax and rms of the finite values)."""
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    finite = t[torch.isfinite(t)]
    if not finite.numel():
        return nan, inf, math.nan, math.nan
    return nan, inf, float(finite.abs().max()), float(finite.pow(2).mean().sqrt())
