"""Named suites of checks, each ending in one results folder.

quick  (CPU, tiny checkpoint, under a minute): each layer type's MoE half, the kernels on uniform
       routing, a hash layer, and the skewed scenario that catches dropped tokens.
ci     what the B200 runner gates merges on: quick, plus every trunk layer and the empty-experts,
       single-token and ep-rank scenarios.
full   every layer x every scenario, and every kernel op on its own.
(The short chain joins the suites with the attention checks.)
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


def _kernel(op: str, layer: int, scenario: str, tokens: int) -> dict:
    return {
        "check": f"kernel.{op}",
        "stages": list(KERNEL_OPS[op]),
        "layer": layer,
        "scenario": scenario,
        "tokens": tokens,
        "propagated": False,
    }


def suite_checks(name: str, ckpt: Checkpoint, tokens: int) -> list[dict]:
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
    checks = [_layer(f"layer.moe.{t}", i, "natural", tokens) for t, i in sorted(first_of_type.items())]
    checks += [_kernel(op, some_layer, "uniform", tokens) for op in ("quant", "l1", "act", "l2")]
    checks.append(_layer("layer.moe.skewed", some_layer, "skewed", tokens))
    if hashed:
        checks.append(_layer("layer.moe.hash", hashed[0], "hash", tokens))
    if name == "quick":
        return checks
    for li in cfg.layers:
        if li.index not in first_of_type.values():
            checks.append(_layer(f"layer.moe.L{li.index}", li.index, "natural", tokens))
    for scenario in ("empty-experts", "single-token", "ep-rank"):
        checks.append(_layer(f"layer.moe.{scenario}", some_layer, scenario, tokens))
    if name == "ci":
        return checks
    for li in cfg.layers:
        for scenario in SCENARIOS_FULL:
            checks.append(_layer(f"layer.moe.L{li.index}.{scenario}", li.index, scenario, tokens))
    checks += [_kernel(op, some_layer, "natural", tokens) for op in KERNELS]
    return checks
