"""Where a NaN (or a divergence) is first produced, and why.

For each layer in range, the backend's own pipeline and the reference run on the same inputs; every
stage records finite or not, NaN/Inf counts, amax and rms on both sides. The producer is the first stage
(layer order, then pipeline order) whose output is non-finite while its inputs are finite; stages that
only pass a NaN on are propagators. The producer is then diagnosed: rerun on the same inputs with the
exact NVFP4 pipeline (kernel bug vs data), its weights and scales audited (NaN codes, zero or infinite
global scales, the input scale against the activations it meets, with the overflow factor), and the
tokens and experts carrying the NaN narrowed down. One sentence names the likely cause.

With --metric cosine the same search looks for the first stage whose isolated cosine vs the reference
falls below the threshold. Until the attention checks exist, each layer's MoE block is traced on its
own input (ffn_norm of the embeddings); the chain of layers joins with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fp4check.audit import _input_finding, _scale_findings
from fp4check.checkpoint import Checkpoint
from fp4check.kernels.contract import NVFP4Activation
from fp4check.kernels.emulated import moe as emu
from fp4check.kernels.emulated.shared import shared_expert as emu_shared
from fp4check.moe_check import PIPELINE, MoECheck, prepare, run_propagated

# each stage's inputs, inside one MoE block
UPSTREAM = {
    "route": (),
    "quant_l1": (),
    "l1": ("quant_l1",),
    "act": ("l1",),
    "quant_l2": ("act",),
    "l2": ("quant_l2",),
    "combine": ("l2", "route"),
    "shared": (),
    "out": ("combine", "shared"),
}
# the families whose weights and scales a stage uses
STAGE_FAMILIES = {"quant_l1": ("w1", "w3"), "l1": ("w1", "w3"), "quant_l2": ("w2",), "l2": ("w2",)}


@dataclass
class StageStat:
    layer: int
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TraceResult:
    stats: list[StageStat] = field(default_factory=list)
    producer: StageStat | None = None
    diagnosis: dict = field(default_factory=dict)
    cause: str = "no NaN or Inf in any stage"


def _tensor_of(value) -> torch.Tensor | None:
    if isinstance(value, NVFP4Activation):
        return emu.dequantize_activation(value)
    if isinstance(value, tuple):
        return value[1].float()
    if isinstance(value, torch.Tensor):
        return value.float()
    return None


def _stat(layer: int, stage: str, got, want) -> StageStat:
    t, r = _tensor_of(got), _tensor_of(want)
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    finite = t[torch.isfinite(t)]
    rf = r[torch.isfinite(r)] if r is not None else torch.zeros(1)
    return StageStat(
        layer,
        stage,
        nan == 0 and inf == 0,
        nan,
        inf,
        float(finite.abs().max()) if finite.numel() else math.nan,
        float(finite.pow(2).mean().sqrt()) if finite.numel() else math.nan,
        r is None or bool(torch.isfinite(r).all()),
        int(torch.isnan(r).sum()) if r is not None else 0,
        float(rf.abs().max()) if rf.numel() else math.nan,
    )


def _rows_from_slots(slots: torch.Tensor, plan) -> torch.Tensor:
    rows = torch.zeros(plan.rows, slots.shape[-1], dtype=slots.dtype)
    m = plan.row_of >= 0
    rows[plan.row_of[m]] = slots[m]
    return rows


def _rerun_exact(stage: str, stages: dict, truth) -> torch.Tensor | None:
    """The producer stage recomputed by the exact NVFP4 pipeline on the backend's own upstream outputs."""
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


def _where(stage: str, got, plan) -> dict:
    """Tokens and experts whose values are non-finite."""
    t = _tensor_of(got)
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


def _diagnose(ckpt: Checkpoint, producer: StageStat, stages: dict, truth) -> dict:
    exact = _rerun_exact(producer.stage, stages, truth)
    exact_finite = None if exact is None else bool(torch.isfinite(exact).all())
    where = _where(producer.stage, stages.get(producer.stage), stages.get("plan") or truth.plan)
    findings = []
    for suffix in STAGE_FAMILIES.get(producer.stage, ()):
        for e in where.get("experts", [])[:64] or range(ckpt.config.n_routed_experts):
            fam = f"layers.{producer.layer}.ffn.experts.{e}.{suffix}"
            w = ckpt.weight(fam)
            findings += [f.as_dict() for f in _scale_findings(fam, w)]
            if producer.stage in ("quant_l1", "quant_l2"):
                act = truth.x.float() if suffix != "w2" else truth.reference["act"].reshape(-1, w.shape[1])
                f = _input_finding(fam, w, act)
                if f is not None:
                    findings.append(f.as_dict())
    return {
        "exact_pipeline_finite": exact_finite,
        "where": where,
        "findings": sorted(findings, key=lambda f: (f["severity"] != "critical", -(f["value"] or 0))),
    }


def _sentence(p: StageStat, d: dict, backend: str) -> str:
    crit = [f for f in d["findings"] if f["severity"] == "critical"]
    loc = f"L{p.layer}.moe.{p.stage}"
    experts = d["where"].get("experts", [])
    who = f" (experts {experts[:8]}{'...' if len(experts) > 8 else ''})" if experts else ""
    overflow = [f for f in crit if f["kind"] == "input scale overflow"]
    if overflow:
        f = overflow[0]
        return (
            f"{loc} produces the first NaN{who}: the checkpoint's input scale of {f['family']} is about "
            f"{f['value']:.0f}x too small for the activations it meets, so block scales overflow e4m3 "
            f"{'and the backend casts them to NaN' if d['exact_pipeline_finite'] else ''}".rstrip()
        )
    if crit:
        f = crit[0]
        return f"{loc} produces the first NaN{who}: {f['family']} is bad data ({f['kind']}: {f['detail']})"
    if d["exact_pipeline_finite"]:
        return (
            f"{loc} produces the first NaN{who} from finite inputs that the exact NVFP4 pipeline turns into "
            f"finite values: a bug in backend {backend}'s {loc.rsplit('.', 1)[-1]} kernel"
        )
    if d["exact_pipeline_finite"] is False:
        return f"{loc} produces the first NaN{who}, and so does the exact NVFP4 pipeline on the same inputs: the data"
    return f"{loc} produces the first NaN{who}"


def nan_trace(
    ckpt: Checkpoint, backend, layers: list[int], scenario: str, tokens: int, seed: int, act_scales: str = "auto"
) -> TraceResult:
    res = TraceResult()
    for layer in layers:
        check = MoECheck("nan-trace", PIPELINE, layer, scenario, tokens, seed, act_scales=act_scales)
        truth = prepare(ckpt, check)
        stages, _, _ = run_propagated(backend, truth)
        ref = dict(truth.reference)
        layer_stats = {}
        for stage in PIPELINE:
            if stage not in stages:
                continue
            want = truth.emulated[stage] if stage.startswith("quant") else ref.get(stage)
            st = _stat(layer, stage, stages[stage], want)
            ups = [layer_stats[u] for u in UPSTREAM[stage] if u in layer_stats]
            if not st.finite:
                st.role = "propagator" if any(not u.finite for u in ups) else "producer"
                if st.role == "producer" and res.producer is None:
                    res.producer = st
                    res.diagnosis = _diagnose(ckpt, st, stages, truth)
                    res.cause = _sentence(st, res.diagnosis, backend.name)
            layer_stats[stage] = st
            res.stats.append(st)
    return res


def divergence_trace(rows: list[dict], threshold: float) -> dict | None:
    """The first stage (layer, then pipeline order) whose isolated cosine vs the reference is below threshold."""

    def order(r):
        stage = r["stage"].rsplit(".", 1)[-1]
        return (r["layer"], PIPELINE.index(stage) if stage in PIPELINE else 99)

    cands = [
        r
        for r in rows
        if r.get("compared_to") == "reference"
        and r.get("propagation") == "isolated"
        and r.get("cosine") is not None
        and not (r["cosine"] >= threshold)
    ]
    return min(cands, key=order) if cands else None


def tree_lines(res: TraceResult) -> list[str]:
    """The path as a tree: layer -> block -> stage, with what each stage did."""
    lines, last_layer = [], None
    for st in res.stats:
        if st.layer != last_layer:
            bad = any(not s.finite for s in res.stats if s.layer == st.layer)
            lines.append(f"L{st.layer} {'NaN' if bad else 'finite'}")
            lines.append("  moe")
            last_layer = st.layer
        mark = {"producer": "PRODUCER", "propagator": "propagates"}.get(st.role, "ok")
        counts = f" nan={st.nan} inf={st.inf}" if not st.finite else ""
        lines.append(f"    {st.stage:<9} {mark}{counts} amax={st.amax:.4g} ref_amax={st.ref_amax:.4g}")
    return lines
