"""Named, reproducible routing scenarios for MoE checks.

Inputs are the MoE block's input x = ffn_norm(h) for a seeded batch of token ids, with h their
embeddings (the attention path joins with the attention references). Scenarios steer the selection,
never the weights: weights always come from the router's scores at the selected experts.

uniform       every expert receives the same number of slots (round-robin selection)
skewed        expert 0 is in every token's top-k and the batch has >= 512 tokens, so one expert gets
              more than 3 x 128 rows (seeds bug 22: tokens dropped past a fixed row budget)
empty-experts selection restricted to the first half of the experts: the rest receive nothing
single-token  one token
hash          a hash-routed layer (tid2eid), whatever --layer says
ep-rank       natural routing; the check also runs every expert-parallel rank and sums them
natural       the router's own selection
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4check.checkpoint import Checkpoint
from fp4check.errors import InputError
from fp4check.references.common import rms_norm
from fp4check.references.moe import router_scores

SCENARIOS = ("natural", "uniform", "skewed", "empty-experts", "single-token", "hash", "ep-rank")
SKEWED_MIN_TOKENS = 512


@dataclass
class Inputs:
    x: torch.Tensor  # bf16 [T, D]
    token_ids: torch.Tensor  # int64 [T]
    forced_ids: torch.Tensor | None  # [T, k] or None (router's own selection)
    layer: int
    tokens: int
    scenario: str


def pick_layer(ckpt: Checkpoint, scenario: str, layer: int | None, layer_type: str | None) -> int:
    cfg = ckpt.config
    if scenario == "hash":
        hashed = [li.index for li in cfg.layers if li.routing == "hash"]
        if not hashed:
            raise InputError("scenario hash needs a hash-routed layer; this checkpoint has none")
        return hashed[0]
    if layer is not None:
        return cfg.layer(layer).index
    if layer_type is not None:
        found = cfg.layers_of_type(layer_type)
        if not found:
            raise InputError(f"this checkpoint has no {layer_type} layer")
        bias_routed = [i for i in found if cfg.layers[i].routing == "bias"]
        return (bias_routed or found)[0]
    bias_routed = [li.index for li in cfg.layers if li.routing == "bias"]
    return (bias_routed or [0])[0]


def make_inputs(ckpt: Checkpoint, scenario: str, layer: int, tokens: int, seed: int) -> Inputs:
    if scenario not in SCENARIOS:
        raise InputError(f"unknown scenario {scenario!r}: use one of {', '.join(SCENARIOS)}")
    if tokens < 1:
        raise InputError("--tokens must be at least 1")
    cfg = ckpt.config
    if scenario == "single-token":
        tokens = 1
    if scenario == "skewed":
        tokens = max(tokens, SKEWED_MIN_TOKENS)
    g = torch.Generator().manual_seed(seed)
    # drawn on the CPU (same ids on every device), then placed where this run computes
    token_ids = torch.randint(0, cfg.vocab_size, (tokens,), generator=g, device="cpu").to(torch.get_default_device())
    h = ckpt.weight("embed").dequantize()[token_ids]
    x = rms_norm(h, ckpt.weight(f"layers.{layer}.ffn_norm").dequantize(), cfg.rms_norm_eps).to(torch.bfloat16)
    k, e = cfg.num_experts_per_tok, cfg.n_routed_experts
    forced = None
    if scenario == "uniform":
        forced = (torch.arange(tokens).unsqueeze(1) * k + torch.arange(k)) % e
    elif scenario in ("skewed", "empty-experts"):
        _, scores = router_scores(x, ckpt.weight(f"layers.{layer}.ffn.gate").dequantize(), cfg.scoring_func)
        if scenario == "skewed":
            scores[:, 0] = float("inf")
        else:
            scores[:, e // 2 :] = -float("inf")
        forced = scores.topk(k, dim=-1).indices
    return Inputs(x, token_ids, forced, layer, tokens, scenario)
