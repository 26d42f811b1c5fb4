"""The MoE checks: run a backend's stages on checkpoint weights and compare each one two ways.

Every stage is compared with the float32 reference (quality) and with the emulated NVFP4 pipeline
(conformance), and measured two ways: isolated (the backend's op fed the exact NVFP4 upstream of the
emulated pipeline) and propagated (the backend's own upstream). Per-slot stages are compared with the
slots of each token ordered by expert id, so the same (token, expert) pairs meet whatever order a
runner keeps; a runner that routes differently fails on the slots it changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.kernels.contract import MoEWeights, NVFP4Activation, RoutePlan
from fp4check.kernels.emulated import moe as emu
from fp4check.kernels.emulated.shared import shared_expert as emu_shared
from fp4check.kernels.registry import backend_needs, provides
from fp4check.metrics import code_match, compare, routing_agreement
from fp4check.moe_weights import load_moe_weights, set_activation_scales
from fp4check.references import moe as ref
from fp4check.references.e2m1 import unpack_e2m1
from fp4check.references.nvfp4 import NVFP4_BLOCK
from fp4check.references.swizzle import unswizzle_128x4
from fp4check.rows import make_row, skip_row
from fp4check.scenarios import make_inputs
from fp4check.thresholds import Thresholds

PIPELINE = ("route", "quant_l1", "l1", "act", "quant_l2", "l2", "combine", "shared", "out")
# the fine op that computes each stage in isolation
STAGE_OP = {
    "route": "router",
    "quant_l1": "nvfp4_quantize",
    "l1": "grouped_gemm_nvfp4",
    "act": "swiglu_clamp",
    "quant_l2": "nvfp4_quantize",
    "l2": "grouped_gemm_nvfp4",
    "combine": "moe_scatter",
    "shared": "shared_expert",
    "swizzle": "nvfp4_quantize",
}
KERNEL_OPS = {
    "quant": ("quant_l1", "quant_l2"),
    "swizzle": ("swizzle",),
    "route": ("route",),
    "l1": ("l1",),
    "act": ("act",),
    "l2": ("l2",),
    "combine": ("combine",),
    "shared": ("shared",),
    "moe": PIPELINE,
}


@dataclass
class MoECheck:
    check: str  # "kernel.l1", "layer.moe", ...
    stages: tuple[str, ...]
    layer: int
    scenario: str
    tokens: int
    seed: int
    act_scales: str = "auto"
    ep_size: int = 1
    ep_rank: int = 0
    propagated: bool = True
    isolated: bool = True
    meta: dict = field(default_factory=dict)
    x: torch.Tensor | None = None  # the block's input when a whole layer computes it (else ffn_norm(embed))
    weights: MoEWeights | None = None  # weights whose activation scales are already set (else loaded and set)


@dataclass
class _Truth:
    """What every backend is compared against, computed once per check."""

    x: torch.Tensor
    token_ids: torch.Tensor
    forced: torch.Tensor | None
    weights: object
    plan: RoutePlan
    reference: dict
    emulated: dict


def _canonical(ids: torch.Tensor) -> torch.Tensor:
    return ids.argsort(dim=1)


def _slots(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return t.gather(1, perm.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _valid_slots(plan: RoutePlan, perm: torch.Tensor) -> torch.Tensor:
    return (plan.row_of >= 0).gather(1, perm)


def prepare(ckpt: Checkpoint, c: MoECheck) -> _Truth:
    inputs = make_inputs(ckpt, c.scenario, c.layer, c.tokens, c.seed)
    if c.x is not None:
        inputs.x = c.x
    w = c.weights or load_moe_weights(ckpt, c.layer, c.ep_size, c.ep_rank)
    r = ref.route(
        inputs.x,
        w.gate,
        w.topk,
        w.routed_scaling_factor,
        bias=w.bias,
        tid2eid=w.tid2eid,
        token_ids=inputs.token_ids,
        scoring_func=w.scoring_func,
        forced_ids=inputs.forced_ids,
    )
    plan = emu.plan_routes(r.ids, r.weights, w.expert_start, w.n_local)
    if c.weights is None:
        c.meta["act_scales"] = set_activation_scales(w, c.act_scales, inputs.x, plan)
    c.tokens = inputs.tokens
    reference = ref.moe(
        inputs.x,
        r,
        w.extra["experts_float"],
        w.extra["shared_float"],
        w.swiglu_limit,
        local=(w.expert_start, w.n_local),
    )
    reference["route"] = (r.ids, r.weights)
    emulated = emu.moe_routed(inputs.x, w, plan)
    emulated["shared"] = emu_shared(inputs.x, w)
    emulated["out"] = (emulated["combine"] + emulated["shared"].float()).to(torch.bfloat16)
    emulated["route"] = (r.ids, r.weights)
    emulated["plan"] = plan
    for s in ("l1", "act", "l2"):
        emulated[s + "_rows"] = emulated[s]
        emulated[s] = emu.per_slot(emulated[s], plan)
    return _Truth(inputs.x, inputs.token_ids, inputs.forced_ids, w, plan, reference, emulated)


def _dequant_slots(a: NVFP4Activation, plan: RoutePlan) -> torch.Tensor:
    return emu.per_slot(emu.dequantize_activation(a), plan)


def _codes_rows(a: NVFP4Activation, plan: RoutePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [T, k, K], scale bytes [T, k, K/16]) per slot of an NVFP4 activation."""
    codes = emu.per_slot(unpack_e2m1(a.packed), plan)
    scales = unswizzle_128x4(a.scales, a.rows, a.cols // NVFP4_BLOCK).view(torch.uint8)
    return codes, emu.per_slot(scales, plan)


def _compare_stage(stage: str, got, got_plan: RoutePlan | None, truth: _Truth, against: str) -> dict:
    """Metrics of one stage output against the reference or the emulated pipeline."""
    want = truth.reference if against == "reference" else truth.emulated
    tplan = truth.plan
    if stage == "route":
        ids, weights = got
        rids, rweights = want["route"]
        p, rp = _canonical(ids), _canonical(rids)
        m = compare(weights.gather(1, p), rweights.gather(1, rp))
        m["overlap"] = routing_agreement(ids, weights, rids, rweights)
        return m
    if stage in ("quant_l1", "quant_l2"):
        if got_plan is None:
            raise LookupError("the backend returned no route plan to read its quantized rows with")
        p, rp = _canonical(got_plan.ids), _canonical(tplan.ids)
        valid = _valid_slots(tplan, rp)
        if against == "reference":
            src = (
                truth.x.float().unsqueeze(1).expand(-1, tplan.ids.shape[1], -1) if stage == "quant_l1" else want["act"]
            )
            m = compare(_slots(_dequant_slots(got, got_plan), p)[valid], _slots(src.float(), rp)[valid])
        else:
            codes, scales = _codes_rows(got, got_plan)
            ecodes, escales = _codes_rows(want[stage], tplan)
            m = compare(
                _slots(_dequant_slots(got, got_plan), p)[valid], _slots(_dequant_slots(want[stage], tplan), rp)[valid]
            )
            m.update(
                code_match(
                    _slots(codes, p)[valid],
                    _slots(ecodes, rp)[valid],
                    _slots(scales, p)[valid],
                    _slots(escales, rp)[valid],
                )
            )
        return m
    if stage == "swizzle":
        m = compare(got.scales.view(torch.uint8).float(), want["quant_l1"].scales.view(torch.uint8).float())
        m["scale_match"] = float(
            (got.scales.view(torch.uint8) == want["quant_l1"].scales.view(torch.uint8)).float().mean()
        )
        return m
    if stage in ("l1", "act", "l2"):
        gplan = got_plan or tplan
        p, rp = _canonical(gplan.ids), _canonical(tplan.ids)
        valid = _valid_slots(tplan, rp)
        return compare(_slots(got.float(), p)[valid], _slots(want[stage].float(), rp)[valid])
    return compare(got.float(), want[stage].float())


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


@contextmanager
def backend_weights(backend, w: MoEWeights) -> Iterator[MoEWeights]:
    """w with its experts as the backend's prepare_weights lays them out (where it has one), restored on
    exit: a prepare may reorder the tensors in place, and the reference and emulated paths read them."""
    if not provides(backend, "prepare_weights"):
        yield w
        return
    done = []
    try:
        for b in (w.w13, w.w2):
            done.append(backend.prepare_weights(b))
        yield replace(w, w13=done[0], w2=done[1])
    finally:
        if provides(backend, "restore_weights"):
            for b in reversed(done):
                backend.restore_weights(b)


def run_isolated(backend, stage: str, truth: _Truth):
    """(output, plan it is laid out in, seconds) of the backend's fine op on the emulated upstream."""
    w, e, plan = truth.weights, truth.emulated, truth.plan
    if stage == "route":
        (ids, weights), s = _timed(backend.router, truth.x, w, truth.token_ids, truth.forced)
        return (ids, weights), None, s
    if stage in ("quant_l1", "swizzle"):
        out, s = _timed(backend.nvfp4_quantize, emu.gather_rows(truth.x, plan), w.input_scale_l1.to_encode())
        return out, plan, s
    if stage == "quant_l2":
        out, s = _timed(backend.nvfp4_quantize, e["act_rows"], w.input_scale_l2.to_encode())
        return out, plan, s
    if stage == "l1":
        out, s = _timed(backend.grouped_gemm_nvfp4, e["quant_l1"], w.w13, plan.offsets)
        return emu.per_slot(out, plan), plan, s
    if stage == "act":
        out, s = _timed(backend.swiglu_clamp, e["l1_rows"], w.swiglu_limit)
        return emu.per_slot(out, plan), plan, s
    if stage == "l2":
        out, s = _timed(backend.grouped_gemm_nvfp4, e["quant_l2"], w.w2, plan.offsets)
        return emu.per_slot(out, plan), plan, s
    if stage == "combine":
        out, s = _timed(backend.moe_scatter, e["l2_rows"], plan)
        return out, plan, s
    if stage == "shared":
        out, s = _timed(backend.shared_expert, truth.x, w)
        return out, None, s
    raise LookupError(f"stage {stage} has no isolated form")


def run_propagated(backend, truth: _Truth) -> tuple[dict, RoutePlan | None, float]:
    """The backend's own pipeline: its coarse moe_forward if it has one, else its fine ops chained."""
    w = truth.weights
    t0 = time.perf_counter()
    if provides(backend, "moe_forward"):
        plan = truth.plan if truth.forced is not None else None  # a forced scenario fixes the routing
        res = backend.moe_forward(truth.x, w, truth.token_ids, plan)
        stages = dict(res.stages)
        stages.setdefault("out", res.out)
        return stages, stages.get("plan"), time.perf_counter() - t0
    ids, weights = backend.router(truth.x, w, truth.token_ids, truth.forced)
    plan = emu.plan_routes(ids, weights, w.expert_start, w.n_local)
    stages = emu.moe_routed(truth.x, w, plan, ops=backend)
    for s in ("l1", "act", "l2"):
        stages[s] = emu.per_slot(stages[s], plan)
    stages["route"] = (ids, weights)
    if provides(backend, "shared_expert"):
        stages["shared"] = backend.shared_expert(truth.x, w)
        stages["out"] = (stages["combine"] + stages["shared"].float()).to(torch.bfloat16)
    return stages, plan, time.perf_counter() - t0


def _fine_ops_complete(backend) -> bool:
    return all(
        provides(backend, op)
        for op in ("router", "nvfp4_quantize", "grouped_gemm_nvfp4", "swiglu_clamp", "moe_scatter")
    )


def moe_rows(ckpt: Checkpoint, backend, c: MoECheck, thresholds: Thresholds, ctx: dict) -> list[dict]:
    """All rows of one MoE check."""
    rows: list[dict] = []
    base = {
        **ctx,
        "check": c.check,
        "layer": c.layer,
        "layer_type": ckpt.config.layers[c.layer].layer_type,
        "scenario": c.scenario,
        "seed": c.seed,
        "backend": backend.name,
    }
    unmet = backend_needs(backend).unmet()
    if unmet:
        return [
            skip_row(base, f"L{c.layer}.moe.{s}", s, f"backend {backend.name} cannot run here: {unmet}")
            for s in c.stages
        ]
    truth = prepare(ckpt, c)
    base["tokens"] = c.tokens
    base["act_scales"] = c.meta["act_scales"]

    def emit(stage, got, got_plan, mode, seconds, shape):
        for against in ("reference", "emulated"):
            if stage == "swizzle" and against == "reference":
                continue
            metric, threshold = thresholds.gate(stage, against)
            try:
                m = _compare_stage(stage, got, got_plan, truth, against)
                rows.append(
                    make_row(
                        base,
                        f"L{c.layer}.moe.{stage}",
                        stage,
                        against,
                        mode,
                        m,
                        metric,
                        threshold,
                        seconds=seconds,
                        shape=shape,
                    )
                )
            except LookupError as err:
                rows.append(skip_row(base, f"L{c.layer}.moe.{stage}", stage, str(err), against, mode))

    with backend_weights(backend, truth.weights) as bw:
        _backend_rows(backend, c, replace(truth, weights=bw), rows, base, emit)
    if c.scenario == "ep-rank" and "combine" in c.stages:
        rows.append(ep_sum_row(ckpt, backend, c, thresholds, base, truth))
    return rows


def _backend_rows(backend, c: MoECheck, truth: _Truth, rows: list[dict], base: dict, emit) -> None:
    """The backend's isolated and propagated runs of one check, each stage handed to emit."""
    if c.isolated:
        for stage in c.stages:
            if stage in ("out",):
                continue
            op = STAGE_OP[stage]
            sid = f"L{c.layer}.moe.{stage}"
            if not provides(backend, op):
                rows.append(
                    skip_row(base, sid, stage, f"backend {backend.name} provides no {op}", "reference", "isolated")
                )
                continue
            try:
                got, gplan, secs = run_isolated(backend, stage, truth)
            except Exception as err:  # a kernel that raises is a result, recorded as error
                rows.append(
                    make_row(
                        base,
                        sid,
                        stage,
                        "reference",
                        "isolated",
                        {},
                        "cosine",
                        math.nan,
                        status="error",
                        message=f"{type(err).__name__}: {err}",
                    )
                )
                continue
            emit(stage, got, gplan, "isolated", secs, _shape(got))
    if c.propagated and (provides(backend, "moe_forward") or _fine_ops_complete(backend)):
        try:
            stages, gplan, secs = run_propagated(backend, truth)
        except Exception as err:
            rows.append(
                make_row(
                    base,
                    f"L{c.layer}.moe.out",
                    "out",
                    "reference",
                    "propagated",
                    {},
                    "cosine",
                    math.nan,
                    status="error",
                    message=f"{type(err).__name__}: {err}",
                )
            )
            stages = {}
        for stage in c.stages:
            if stage == "swizzle":
                continue
            if stage in stages:
                emit(stage, stages[stage], gplan, "propagated", secs, _shape(stages[stage]))
            elif stages:
                rows.append(
                    skip_row(
                        base,
                        f"L{c.layer}.moe.{stage}",
                        stage,
                        f"backend {backend.name} returns no {stage} stage",
                        "reference",
                        "propagated",
                    )
                )


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(map(str, x.shape))
    if isinstance(x, NVFP4Activation):
        return f"{x.rows}x{x.cols}"
    if isinstance(x, tuple):
        return _shape(x[0])
    return ""


EP_RANKS = 2


def ep_sum_row(ckpt: Checkpoint, backend, c: MoECheck, thresholds: Thresholds, base: dict, truth: _Truth) -> dict:
    """The routed output summed over simulated expert-parallel ranks equals the single-rank output."""
    total = torch.zeros_like(truth.emulated["combine"])
    single, secs = None, 0.0
    for rank in range(EP_RANKS):
        w = load_moe_weights(ckpt, c.layer, EP_RANKS, rank)
        w.input_scale_l1, w.input_scale_l2 = truth.weights.input_scale_l1, truth.weights.input_scale_l2
        plan = emu.plan_routes(truth.plan.ids, truth.plan.weights, w.expert_start, w.n_local)
        sub = _Truth(truth.x, truth.token_ids, truth.plan.ids, w, plan, truth.reference, truth.emulated)
        stages, _, s = run_propagated(backend, sub)
        secs += s
        total += stages["combine"].float()
    single, _, s = run_propagated(backend, truth)
    metric, threshold = thresholds.gate("ep_sum", "single_rank")
    m = compare(total, single["combine"].float())
    return make_row(
        base,
        f"L{c.layer}.moe.ep_sum",
        "ep_sum",
        "single_rank",
        "propagated",
        m,
        metric,
        threshold,
        seconds=secs + s,
        message=f"sum over {EP_RANKS} ranks vs one rank",
    )
