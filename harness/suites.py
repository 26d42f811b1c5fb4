"""Named suites of checks, each ending in one results folder.

quick  (CPU, tiny checkpoint, under a minute): the whole first layer of each type (attention, mHC,
       MoE; prefill and decode), the kernels on uniform routing, a hash layer, and the skewed scenario
       that catches dropped tokens.
ci     what the B200 runner gates merges on: quick, plus every trunk layer whole, the chain over all
       layers and the head, and the empty-experts, single-token and ep-rank scenarios.
full   ci, plus the exact-mode reference, every layer's MoE x every scenario, and every kernel op.
"""

from __future__ import annotations

from fp4check.checkpoint import Checkpoint
from fp4check.errors import InputError
from fp4check.moe_check import KERNEL_OPS, PIPELINE

SUITES = ("quick", "ci", "full")
KERNELS = ("quant", "swizzle", "route", "l1", "act", "l2", "combine", "shared")
SCENARIOS_FULL = ("natural", "uniform", "skewed", "empty-experts", "single-token", "ep-rank")


def _layer(check: str, layer: int, scenario: str, tokens: int) -> dict:
    return {
        "check": check,
        "stages": list(PIPELINE),
        "layer": layer,
        "scenario": scenario,
        "tokens": tokens,
        "propagated": True,
    }


def _whole(layer: int, tokens: int, ref_mode: str = "served") -> dict:
    return {
        "kind": "layer",
        "check": f"layer.L{layer}" + ("" if ref_mode == "served" else f".{ref_mode}"),
        "layer": layer,
        "tokens": tokens,
        "only": None,
        "phase": "both",
        "ref_mode": ref_mode,
    }


def _chain(ckpt: Checkpoint, tokens: int, seed: int) -> dict:
    import torch

    ids = torch.randint(0, ckpt.config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(seed))
    last = ckpt.config.num_hidden_layers - 1
    return {
        "kind": "chain",
        "check": "chain",
        "layer": 0,
        "tokens": tokens,
        "first": 0,
        "last": last,
        "token_ids": ids.tolist(),
        "ref_mode": "served",
        "dump": None,
    }


def _kernel(op: str, layer: int, scenario: str, tokens: int) -> dict:
    return {
        "check": f"kernel.{op}",
        "stages": list(KERNEL_OPS[op]),
        "layer": layer,
        "scenario": scenario,
        "tokens": tokens,
        "propagated": False,
    }


def suite_checks(name: str, ckpt: Checkpoint, tokens: int, seed: int = 0) -> list[dict]:
    """Partial check specs (the caller adds backend, seed, checkpoint, gates)."""
    if name not in SUITES:
        raise InputError(f"unknown suite {name!r}: use one of {', '.join(SUITES)}")
    cfg = ckpt.config
    first_of_type = {}
    for li in cfg.layers:
        if li.routing == "bias" or li.layer_type not in first_of_type:
            first_of_type.setdefault(li.layer_type, li.index)
    hashed = [li.index for li in cfg.layers if li.routing == "hash"]
    some_layer = first_of_type.get("C4A", cfg.layers[0].index)
    checks = [_whole(i, tokens) for _, i in sorted(first_of_type.items())]
    checks += [_kernel(op, some_layer, "uniform", tokens) for op in ("quant", "l1", "act", "l2")]
    checks.append(_layer("layer.moe.skewed", some_layer, "skewed", tokens))
    if hashed:
        checks.append(_layer("layer.moe.hash", hashed[0], "hash", tokens))
    if name == "quick":
        return checks
    for li in cfg.layers:
        if li.index not in first_of_type.values():
            checks.append(_whole(li.index, tokens))
    checks.append(_chain(ckpt, tokens, seed))
    for scenario in ("empty-experts", "single-token", "ep-rank"):
        checks.append(_layer(f"layer.moe.{scenario}", some_layer, scenario, tokens))
    if name == "ci":
        return checks
    checks += [_whole(i, tokens, "exact") for _, i in sorted(first_of_type.items())]
    for li in cfg.layers:
        for scenario in SCENARIOS_FULL:
            checks.append(_layer(f"layer.moe.L{li.index}.{scenario}", li.index, scenario, tokens))
    checks += [_kernel(op, some_layer, "natural", tokens) for op in KERNELS]
    return checks
