"""Sparse attention with a sink, the key sets of each layer type, and the lightning indexer
(shared/spec/deepseek_v4.md §2.5 step 7, §2.8, §2.9), in float32.

Every query t attends to a set of kv entries given as indices (-1 = no entry, skipped): its window
(the 128 most recent tokens, itself included), plus on HCA layers every visible compressed entry and on
CSA layers the indexer's top-k visible entries. Window and compressed entries are both attended (no
dedup). The sink adds e^{sink_h} to the softmax denominator only; the scale is head_dim^-0.5 with no
YaRN mscale.
"""

from __future__ import annotations

import torch

from fp4check.references.compressor import visible_entries


def window_indices(t_count: int, window: int) -> torch.Tensor:
    """[T, window] token indices max(0, t-window+1)..t, -1 where the window reaches before token 0."""
    t = torch.arange(t_count).unsqueeze(1)
    idx = t - (window - 1) + torch.arange(window).unsqueeze(0)
    return torch.where(idx >= 0, idx, torch.full_like(idx, -1))


def hca_indices(t_count: int, ratio: int, n_entries: int) -> torch.Tensor:
    """[T, n_entries] every compressed entry visible to t (entry w needs w*ratio + ratio - 1 <= t), else -1."""
    w = torch.arange(n_entries).unsqueeze(0)
    visible = torch.tensor([visible_entries(t, ratio) for t in range(t_count)]).unsqueeze(1)
    return torch.where(w < visible, w.expand(t_count, -1), torch.full((t_count, n_entries), -1))


def indexer_scores(q: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """score(t, s) = sum_h w[t, h] * ReLU(q[t, h] . k[s]); q [T, H, d], keys [W, d], weights [T, H] -> [T, W]."""
    dots = torch.einsum("thd,sd->ths", q.to(torch.float32), keys.to(torch.float32))
    return (weights.to(torch.float32).unsqueeze(-1) * torch.relu(dots)).sum(1)


def indexer_topk(scores: torch.Tensor, topk: int, ratio: int) -> torch.Tensor:
    """[T, min(topk, W)] the best visible entries per query (visibility (t+1)//ratio), -1 where none is left."""
    t_count, n = scores.shape
    k = min(topk, n)
    visible = torch.tensor([visible_entries(t, ratio) for t in range(t_count)]).unsqueeze(1)
    masked = torch.where(torch.arange(n).unsqueeze(0) < visible, scores, torch.full_like(scores, -float("inf")))
    vals, idx = top_k_stable(masked, k)
    return torch.where(torch.isfinite(vals), idx, torch.full_like(idx, -1))


def top_k_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best along the last dim, ties to the lower index. ReLU scores tie exactly (at 0) whenever
    every head's dot product is negative; torch.topk breaks such ties in no documented order, which would
    make a prefill row and the decode of the same token pick different entries."""
    vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return vals[..., :k], idx[..., :k]


def sparse_attention(
    q: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor, sink: torch.Tensor, scale: float
) -> torch.Tensor:
    """o[t, h] = sum_j e^{s_j - m} kv_j / (sum_j e^{s_j - m} + e^{sink_h - m}), s_j = scale * q[t, h] . kv_j.

    q [T, H, d], kv [N, d] (K = V), idx [T, K] into kv (-1 skipped), sink [H] -> [T, H, d] float32.
    """
    qf, kvf = q.to(torch.float32), kv.to(torch.float32)
    valid = idx >= 0
    keys = kvf[idx.clamp(min=0)].masked_fill(~valid.unsqueeze(-1), 0.0)  # [T, K, d]; -1 entries read nothing
    s = torch.einsum("thd,tkd->thk", qf, keys) * scale
    s = s.masked_fill(~valid.unsqueeze(1), -float("inf"))
    sink_logit = sink.to(torch.float32).view(1, -1, 1).expand(s.shape[0], -1, 1)
    m = torch.maximum(s.amax(-1, keepdim=True), sink_logit)
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True) + torch.exp(sink_logit - m)
    return torch.einsum("thk,tkd->thd", e / den, keys)
