"""`fp4check selftest`: every injected fault through the checks that should catch it, and clean runs that
must stay clean. The detection matrix says, per fault, which stage caught it first (pipeline order,
isolated before propagated), with the metric and value, and how many rows failed."""

from __future__ import annotations

from fp4check.moe_check import PIPELINE

CLEAN = "(clean)"
BAD = ("fail", "error", "crash", "timeout")


def selftest_specs(base: dict, layer: int, hash_layer: int | None, tokens: int) -> list[tuple[str, dict]]:
    """(fault, check spec) pairs: each fault on the scenario that exposes it, and the clean runs."""
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

    out = []
    for scenario in ("natural", "uniform", "skewed"):
        out.append((CLEAN, spec(None, scenario)))
    out.append((CLEAN, spec(None, "natural", 2, 1)))
    if hash_layer is not None:
        out.append((CLEAN, spec(None, "hash", at=hash_layer)))
    for fault, (_, _, scenario) in FAULTS.items():
        if fault in NEEDS_A_DEFECT:
            continue
        if scenario == "ep-rank-1":
            out.append((fault, spec(fault, "natural", 2, 1)))
        else:
            out.append((fault, spec(fault, scenario)))
    return out


def first_catch(rows: list[dict]) -> dict | None:
    bad = [r for r in rows if r["status"] in BAD]
    if not bad:
        return None

    def order(r):
        stage = r["stage"].rsplit(".", 1)[-1]
        return (
            PIPELINE.index(stage) if stage in PIPELINE else len(PIPELINE),
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
