"""DeepSeek-V4 MoE reference in float32 (shared/spec/deepseek_v4.md §2.10), every stage exposed.

gate -> route -> routed experts (w1/w3 -> clamped SwiGLU -> w2) -> combine, plus the shared expert.
The input x is ffn_norm(u), the same tensor for the gate and the experts. Per-slot tensors are laid out
[T, k, ...] in the router's slot order, the layout every check compares in.

DS-REF multiplies the SwiGLU output by the routing weight before w2 (and casts to bf16 there);
transformers multiplies after w2. In exact arithmetic they agree; this reference keeps everything in
float32 and applies the weight in the combine, so the `l2` stage is the unweighted expert output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fp4check.references.common import clamped_swiglu

# vLLM clamps the renormalisation denominator at 1e-20 and transformers adds 1e-20; DS-REF uses none.
# Scores are sqrt(softplus(.)) > 0, so the sum is never 0 and DS-REF's form is kept.


@dataclass
class Routing:
    logits: torch.Tensor  # [T, E] fp32
    scores: torch.Tensor  # [T, E] fp32, sqrt(softplus(logits))
    ids: torch.Tensor  # [T, k] int64 global expert ids
    weights: torch.Tensor  # [T, k] fp32, renormalized and scaled


def router_scores(
    x: torch.Tensor, gate_weight: torch.Tensor, scoring_func: str = "sqrtsoftplus"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, scores): fp32 logits x @ W_gate^T and sqrt(softplus(logits))."""
    logits = x.to(torch.float32) @ gate_weight.to(torch.float32).t()
    if scoring_func == "sqrtsoftplus":
        return logits, torch.sqrt(F.softplus(logits))
    if scoring_func == "sigmoid":
        return logits, torch.sigmoid(logits)
    if scoring_func == "softmax":
        return logits, logits.softmax(-1)
    raise ValueError(f"unknown scoring function {scoring_func!r}")


def route(
    x: torch.Tensor,
    gate_weight: torch.Tensor,
    topk: int,
    routed_scaling_factor: float,
    bias: torch.Tensor | None = None,
    tid2eid: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
    scoring_func: str = "sqrtsoftplus",
    forced_ids: torch.Tensor | None = None,
) -> Routing:
    """Select top-k experts per token and weight them.

    Hash layers take the ids from tid2eid[token_ids]; other layers take top-k of score + bias, where the
    bias only selects (spec §4.5: using biased scores as weights flattens them). The weights are the
    selected scores renormalized to sum 1 and multiplied by routed_scaling_factor. `forced_ids` replaces
    the selection (test scenarios), weights still coming from the scores.
    """
    logits, scores = router_scores(x, gate_weight, scoring_func)
    if forced_ids is not None:
        ids = forced_ids.to(torch.int64)
    elif tid2eid is not None:
        if token_ids is None:
            raise ValueError("a hash-routed layer needs the token ids")
        ids = tid2eid[token_ids.to(torch.int64)].to(torch.int64)
    else:
        select = scores if bias is None else scores + bias.to(torch.float32)
        ids = select.topk(topk, dim=-1).indices
    picked = scores.gather(1, ids)
    weights = picked / picked.sum(-1, keepdim=True) * routed_scaling_factor
    return Routing(logits, scores, ids, weights)


def expert_mlp(
    x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, limit: float | None
) -> dict[str, torch.Tensor]:
    """One SwiGLU expert in float32: {"gate_up": [.., 2I] (gate then up), "act": [.., I], "out": [.., D]}."""
    xf = x.to(torch.float32)
    gate, up = xf @ w1.to(torch.float32).t(), xf @ w3.to(torch.float32).t()
    act = clamped_swiglu(gate, up, limit)
    return {"gate_up": torch.cat([gate, up], -1), "act": act, "out": act @ w2.to(torch.float32).t()}


def moe(
    x: torch.Tensor,
    routing: Routing,
    experts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    limit: float | None,
    local: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The MoE block's stages.

    experts: expert id -> (w1 [I, D], w3 [I, D], w2 [D, I]) float weights (only the ids routed to are
    needed). Returns l1 [T, k, 2I], act [T, k, I], l2 [T, k, D] per slot, combine [T, D] (routed sum in
    fp32), shared [T, D], out [T, D] = combine + shared. With local = (first id, count) only the slots
    routed to those experts contribute (one expert-parallel rank); the others stay 0.
    """
    t, k = routing.ids.shape
    xf = x.to(torch.float32)
    d = xf.shape[-1]
    first = next(iter(experts.values()))
    i = first[0].shape[0]
    l1 = torch.zeros(t, k, 2 * i)
    act = torch.zeros(t, k, i)
    l2 = torch.zeros(t, k, d)
    lo, n = local if local is not None else (0, 1 << 62)
    mask = (routing.ids >= lo) & (routing.ids < lo + n)
    for e in routing.ids[mask].unique().tolist():
        tok, slot = (routing.ids == e).nonzero(as_tuple=True)
        st = expert_mlp(xf[tok], *experts[e], limit)
        l1[tok, slot], act[tok, slot], l2[tok, slot] = st["gate_up"], st["act"], st["out"]
    combine = (l2 * torch.where(mask, routing.weights, 0.0).unsqueeze(-1)).sum(1)
    shared_out = expert_mlp(xf, *shared, limit)["out"] if shared is not None else torch.zeros_like(combine)
    return {"l1": l1, "act": act, "l2": l2, "combine": combine, "shared": shared_out, "out": combine + shared_out}
