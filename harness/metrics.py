"""How far an output is from what it should be: the numbers of every result row.

cosine, relative L2, max abs, SQNR (dB), NaN/Inf counts and amax on both sides, and for quantized
tensors the fraction of equal e2m1 codes and scale bytes with the largest code distance. Conventions
that make the gates honest: NaN anywhere in the output makes cosine and SQNR NaN (and NaN never passes
a >= gate); an all-zero output against a non-zero reference has cosine 0.
"""

from __future__ import annotations

import math

import torch


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).reshape(-1).cpu()


def _amax_and_counts(t: torch.Tensor) -> tuple[float, int, int]:
    """(max |finite element|, NaN count, Inf count), without copies when everything is finite."""
    finite = torch.isfinite(t)
    if bool(finite.all()):
        lo, hi = torch.aminmax(t) if t.numel() else (torch.tensor(math.nan), torch.tensor(math.nan))
        return max(abs(float(lo)), abs(float(hi))), 0, 0
    nan = int(torch.isnan(t).sum())
    inf = int((~finite).sum()) - nan
    kept = t[finite]
    return (float(kept.abs().max()) if kept.numel() else math.nan), nan, inf


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Metrics of out against ref (same number of elements)."""
    o, r = _f64(out), _f64(ref)
    if o.numel() != r.numel():
        raise ValueError(f"cannot compare {tuple(out.shape)} with {tuple(ref.shape)}")
    amax_out, nan_out, inf_out = _amax_and_counts(o)
    amax_ref, nan_ref, inf_ref = _amax_and_counts(r)
    row = {
        "nan_out": nan_out,
        "inf_out": inf_out,
        "nan_ref": nan_ref,
        "inf_ref": inf_ref,
        "amax_out": amax_out,
        "amax_ref": amax_ref,
    }
    if nan_out or inf_out or nan_ref or inf_ref:
        return {**row, "cosine": math.nan, "rel_l2": math.nan, "max_abs": math.nan, "sqnr_db": math.nan}
    err = o - r
    norm = torch.linalg.vector_norm
    no, nr, ne = float(norm(o)), float(norm(r)), float(norm(err))
    if ne == 0:  # bit-identical: exactly 1 (the float64 dot product would round it)
        cosine = 1.0 if nr > 0 or no == 0 else 0.0
    elif no == 0 or nr == 0:
        cosine = 0.0
    else:
        cosine = float(torch.dot(o, r)) / (no * nr)
    rel = ne / nr if nr > 0 else (0.0 if ne == 0 else math.inf)
    sqnr = math.inf if ne == 0 else (10 * math.log10(nr**2 / ne**2) if nr > 0 else -math.inf)
    max_abs = float(err.abs().max()) if err.numel() else 0.0
    return {**row, "cosine": cosine, "rel_l2": rel, "max_abs": max_abs, "sqnr_db": sqnr}


def code_match(
    codes_out: torch.Tensor, codes_ref: torch.Tensor, scales_out: torch.Tensor, scales_ref: torch.Tensor
) -> dict[str, float]:
    """Agreement of two NVFP4 encodings given as e2m1 codes and e4m3 scale bytes (same layout)."""
    a, b = codes_out.reshape(-1).to(torch.int16), codes_ref.reshape(-1).to(torch.int16)
    sa, sb = scales_out.reshape(-1).view(torch.uint8), scales_ref.reshape(-1).view(torch.uint8)
    # signed distance on the ordered e2m1 grid: magnitude index with the sign applied
    va = torch.where(a >= 8, -(a - 8), a)
    vb = torch.where(b >= 8, -(b - 8), b)
    return {
        "code_match": float((a == b).float().mean()) if a.numel() else 1.0,
        "scale_match": float((sa == sb).float().mean()) if sa.numel() else 1.0,
        "max_code_distance": int((va - vb).abs().max()) if a.numel() else 0,
    }


def routing_agreement(
    ids_out: torch.Tensor,
    weights_out: torch.Tensor,
    ids_ref: torch.Tensor,
    weights_ref: torch.Tensor,
    rtol: float = 1e-3,
) -> float:
    """Fraction of (token, expert) picks that both routings make with the same weight (within rtol).

    Catches a different selection (the expert set) and a different weighting (biased scores used as
    weights, a missing routed_scaling_factor) with one number.
    """
    t, k = ids_ref.shape
    if t * k == 0:
        return 1.0
    n = int(max(int(ids_out.max()), int(ids_ref.max()))) + 1
    dense_out = torch.zeros(t, n, dtype=torch.float64).scatter_(1, ids_out.long(), weights_out.double())
    dense_ref = torch.zeros(t, n, dtype=torch.float64).scatter_(1, ids_ref.long(), weights_ref.double())
    picked_ref = torch.zeros(t, n, dtype=torch.bool).scatter_(1, ids_ref.long(), True)
    picked_out = torch.zeros(t, n, dtype=torch.bool).scatter_(1, ids_out.long(), True)
    close = (dense_out - dense_ref).abs() <= rtol * dense_ref.abs()
    return float((picked_ref & picked_out & close).sum()) / (t * k)


def set_overlap(got: torch.Tensor, want: torch.Tensor) -> float:
    """Mean over rows of |got & want| / |want| for index sets [T, k] (-1 = no entry); rows where want is
    empty count 1 if got is empty too, else 0."""
    if want.shape[0] == 0:
        return 1.0
    total = 0.0
    for g, w in zip(got.tolist(), want.tolist(), strict=True):
        gs, ws = {i for i in g if i >= 0}, {i for i in w if i >= 0}
        total += len(gs & ws) / len(ws) if ws else float(not gs)
    return total / want.shape[0]


def bytes_match(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Fraction of identical elements by bit pattern (bytes, or the bits of bf16/fp32 values): the
    conformance metric of stored formats, reported in the code_match column."""
    if got.shape != want.shape:
        raise LookupError(f"shape {tuple(got.shape)} differs from {tuple(want.shape)}")
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[got.element_size()]
    a, b = got.contiguous().view(view), want.to(got.dtype).contiguous().view(view)
    return {"code_match": float((a == b).float().mean()) if a.numel() else 1.0}
