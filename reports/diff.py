"""Comparing two runs stage by stage: metric deltas, new failures, new NaN, stages that appeared or vanished,
and a regression rule that CI gates on.

Rows are matched on (check, stage, compared_to, propagation, scenario): the backend may differ, so the same
command can compare two backends or two commits. Regression (defaults, tunable): cosine drops by more
than 0.002, SQNR drops by more than 1 dB, a NaN or Inf appears where there was none, or a row goes from
pass to fail/error/crash/timeout. SQNR is capped at 60 dB before the difference: past that it measures
accumulation order (a bit-exact CPU row has infinite SQNR, the same stage on a GPU ~90 dB), not quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BAD = ("fail", "error", "crash", "timeout")
SQNR_CEILING_DB = 60.0
KEY = ("check", "stage", "compared_to", "propagation", "scenario")


@dataclass
class DiffRules:
    max_cosine_drop: float = 0.002
    max_sqnr_drop_db: float = 1.0


@dataclass
class Diff:
    changes: list[dict] = field(default_factory=list)  # every matched row, with deltas and reasons
    appeared: list[dict] = field(default_factory=list)
    vanished: list[dict] = field(default_factory=list)

    @property
    def regressions(self) -> list[dict]:
        return [c for c in self.changes if c["regression"]]


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def row_key(r: dict) -> tuple:
    return tuple(r.get(k) for k in KEY)


def diff_rows(a: list[dict], b: list[dict], rules: DiffRules | None = None) -> Diff:
    """What changed from run A (before) to run B (after)."""
    rules = rules or DiffRules()
    ia, ib = {row_key(r): r for r in a}, {row_key(r): r for r in b}
    d = Diff(appeared=[ib[k] for k in ib if k not in ia], vanished=[ia[k] for k in ia if k not in ib])
    for k in ib:
        if k not in ia:
            continue
        ra, rb = ia[k], ib[k]
        dcos = _num(rb.get("cosine")) - _num(ra.get("cosine"))
        dsqnr = min(_num(rb.get("sqnr_db")), SQNR_CEILING_DB) - min(_num(ra.get("sqnr_db")), SQNR_CEILING_DB)
        reasons = []
        if dcos < -rules.max_cosine_drop:
            reasons.append(f"cosine dropped {-dcos:.4g}")
        if dsqnr < -rules.max_sqnr_drop_db:
            reasons.append(f"SQNR dropped {-dsqnr:.3g} dB")
        for col in ("nan_out", "inf_out"):
            if (_num(rb.get(col)) or 0) > 0 and not (_num(ra.get(col)) > 0):
                reasons.append(f"new {col.split('_')[0].upper()} ({int(_num(rb.get(col)))})")
        if ra["status"] == "pass" and rb["status"] in BAD:
            reasons.append(f"pass -> {rb['status']}")
        d.changes.append(
            {
                "stage": rb["stage"],
                "check": rb.get("check"),
                "compared_to": rb.get("compared_to"),
                "propagation": rb.get("propagation"),
                "scenario": rb.get("scenario"),
                "status_a": ra["status"],
                "status_b": rb["status"],
                "cosine_a": _num(ra.get("cosine")),
                "cosine_b": _num(rb.get("cosine")),
                "d_cosine": dcos,
                "d_sqnr_db": dsqnr,
                "regression": bool(reasons),
                "why": "; ".join(reasons),
            }
        )
    d.changes.sort(key=lambda c: (not c["regression"], c["d_cosine"] if not math.isnan(c["d_cosine"]) else -1))
    return d
