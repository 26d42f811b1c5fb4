"""`fp4check selftest`: every injected fault through the checks that should catch it, and clean runs that
must stay clean. The detection matrix says, per fault, which stage caught it first (pipeline order,
isolated before propagated), with the metric and value, and how many rows failed."""

from __future__ import annotations

from fp4check.moe_check import PIPELINE

# the order a layer computes its stages in (stage ids less the "L{n}." prefix): the first failing one is the catch
STAGE_ORDER = (
    "hc.attn_pre",
    *(f"attn.{s}" for s in ("q", "kv", "compress", "indexer", "kv_write", "kv_read", "core", "out")),
    "hc.attn_post",
    "hc.ffn_pre",
    *(f"moe.{s}" for s in PIPELINE),
    "hc.ffn_post",
    "out",
)
CLEAN = "(clean)"
BAD = ("fail", "error", "crash", "timeout")


def selftest_specs(
    base: dict,
    layer: int,
    hash_layer: int | None,
    tokens: int,
    attn_layers: dict[str, int],
    n_layers: int,
    token_ids: list[int],
) -> list[tuple[str, dict]]:
    """(fault, check spec) pairs: each fault on the scenario that exposes it, and the clean runs.
    attn_layers: layer type -> the layer its attention faults run on; the chain runs layers 0..n-1."""
    from fp4check.kernels.emulated.faults import FAULTS, NEEDS_A_DEFECT

    def spec(fault: str | None, scenario: str, ep_size: int = 1, ep_rank: int = 0, at: int = layer) -> dict:
        name = fault or "clean"
        return {
            **base,
            "check": f"selftest.{name}.{scenario}",
            "stages": list(PIPELINE),
            "layer": at,
            "scenario": scenario,
            "tokens": tokens,
            "propagated": True,
            "isolated": True,
            "ep_size": ep_size,
            "ep_rank": ep_rank,
            "inject": [fault] if fault else [],
        }

    def attn_spec(fault: str | None, layer_type: str) -> dict:
        return {
            **base,
            "kind": "layer",
            "check": f"selftest.{fault or 'clean'}.attn-{layer_type}",
            "scenario": f"attn:{layer_type}",
            "layer": attn_layers[layer_type],
            "tokens": tokens,
            "only": "attn",
            "phase": "prefill",
            "ref_mode": "served",
            "ep_size": 1,
            "inject": [fault] if fault else [],
        }

    def chain_spec(fault: str | None) -> dict:
        return {
            **base,
            "kind": "chain",
            "check": f"selftest.{fault or 'clean'}.chain",
            "scenario": "chain",
            "layer": 0,
            "tokens": tokens,
            "first": 0,
            "last": min(2, n_layers - 1),  # layers 0-2 hold the shared-state fault's pair; the rest only costs time
            "token_ids": token_ids,
            "ref_mode": "served",
            "ep_size": 1,
            "inject": [fault] if fault else [],
        }

    out = []
    used_types = sorted({s.split(":")[1] for _, _, s in FAULTS.values() if s.startswith("attn:")})
    for layer_type in used_types:
        if layer_type in attn_layers:
            out.append((CLEAN, attn_spec(None, layer_type)))
    out.append((CLEAN, chain_spec(None)))
    for scenario in ("natural", "uniform", "skewed"):
        out.append((CLEAN, spec(None, scenario)))
    out.append((CLEAN, spec(None, "natural", 2, 1)))
    if hash_layer is not None:
        out.append((CLEAN, spec(None, "hash", at=hash_layer)))
    for fault, (_, _, scenario) in FAULTS.items():
        if fault in NEEDS_A_DEFECT:
            continue
        if scenario.startswith("attn:"):
            if scenario[5:] in attn_layers:
                out.append((fault, attn_spec(fault, scenario[5:])))
        elif scenario == "chain":
            out.append((fault, chain_spec(fault)))
        elif scenario == "ep-rank-1":
            out.append((fault, spec(fault, "natural", 2, 1)))
        else:
            out.append((fault, spec(fault, scenario)))
    return out


def first_catch(rows: list[dict]) -> dict | None:
    bad = [r for r in rows if r["status"] in BAD]
    if not bad:
        return None

    def order(r):
        stage = r["stage"].split(".", 1)[-1] if r["stage"].startswith("L") else r["stage"]
        return (
            r.get("layer") if r.get("layer") is not None else 1 << 30,
            STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER),
            r.get("propagation") != "isolated",
            r.get("compared_to") != "reference",
        )

    return min(bad, key=order)


def matrix(results: list[tuple[str, dict, list[dict]]]) -> list[dict]:
    from fp4check.kernels.emulated.faults import FAULTS

    out = []
    for fault, spec, rows in results:
        catch = first_catch(rows)
        n_bad = sum(r["status"] in BAD for r in rows)
        ok = (catch is None) if fault == CLEAN else (catch is not None)
        out.append(
            {
                "fault": fault,
                "models": FAULTS[fault][1] if fault in FAULTS else "",
                "scenario": spec["scenario"]
                + (f" ep {spec['ep_rank']}/{spec['ep_size']}" if spec["ep_size"] > 1 else ""),
                "caught_by": catch["stage"] if catch else "",
                "vs": catch.get("compared_to") if catch else "",
                "mode": catch.get("propagation") if catch else "",
                "metric": catch.get("metric") if catch else "",
                "value": catch.get("value") if catch else None,
                "status": catch["status"] if catch else "",
                "failing_rows": n_bad,
                "rows": len(rows),
                "ok": ok,
            }
        )
    return out
