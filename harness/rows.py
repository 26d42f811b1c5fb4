"""Building result rows (the columns are reports.store.COLUMNS) and deciding their status."""

from __future__ import annotations

import math

from fp4check.reports.store import COLUMNS


def _status(m: dict, metric: str, threshold: float) -> tuple[str, str]:
    value = m.get(metric, math.nan)
    nan_new = (m.get("nan_out") or 0) > (m.get("nan_ref") or 0)
    inf_new = (m.get("inf_out") or 0) > (m.get("inf_ref") or 0)
    if nan_new or inf_new:
        got = f"{m.get('nan_out', 0)} NaN / {m.get('inf_out', 0)} Inf"
        return "fail", f"output has {got} (reference {m.get('nan_ref', 0)} / {m.get('inf_ref', 0)})"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "fail", f"{metric} is NaN"
    if value >= threshold:
        return "pass", ""
    return "fail", f"{metric} {value:.6g} < {threshold:g}"


def make_row(
    base: dict,
    stage_id: str,
    stage: str,
    compared_to: str,
    propagation: str,
    metrics: dict,
    metric: str,
    threshold: float,
    status: str | None = None,
    message: str = "",
    seconds: float = math.nan,
    shape: str = "",
) -> dict:
    row = {c: None for c in COLUMNS}
    row.update({k: v for k, v in base.items() if k in COLUMNS})
    row.update({k: v for k, v in metrics.items() if k in COLUMNS})
    if status is None:
        status, why = _status(metrics, metric, threshold)
        message = "; ".join(x for x in (why, message) if x)
    row.update(
        {
            "stage": stage_id,
            "compared_to": compared_to,
            "propagation": propagation,
            "metric": metric,
            "value": metrics.get(metric),
            "threshold": threshold,
            "status": status,
            "shape": shape,
            "message": message,
            "seconds": seconds,
        }
    )
    row["peak_mem_bytes"] = peak_memory()
    return row


def skip_row(
    base: dict, stage_id: str, stage: str, reason: str, compared_to: str = "reference", propagation: str = "isolated"
) -> dict:
    return make_row(
        base, stage_id, stage, compared_to, propagation, {}, "cosine", math.nan, status="skip", message=reason
    )


def peak_memory() -> int:
    """Peak memory of this process so far: the CUDA allocator's peak if a GPU is in use, else max RSS."""
    import resource
    import sys

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
