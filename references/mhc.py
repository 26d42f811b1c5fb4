"""Manifold-constrained hyper-connections (mHC), shared/spec/deepseek_v4.md §2.2-2.4, in float32.

The residual stream is X [T, n_hc, D] (4 streams). Before each sub-block, `mhc_pre` mixes the streams into
the sub-block's input and computes the weights that `mhc_post` uses to write the sub-block's output back.

DeepSeek's reference normalizes after the projection, mix = (x @ fn^T) * rsqrt(mean(x^2) + eps); transformers
normalizes first and then projects. The two agree in exact arithmetic; this module follows DeepSeek's order.
"""

from __future__ import annotations

import torch


def _mix(x: torch.Tensor, fn: torch.Tensor, eps: float) -> torch.Tensor:
    """[T, n*D] streams -> (x @ fn^T) * rsqrt(mean(x^2) + eps), in float32."""
    xf = x.to(torch.float32)
    return (xf @ fn.to(torch.float32).t()) * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """softmax over the last axis (+eps), a column normalization, then iters-1 rounds of row then column
    normalization: an approximately doubly stochastic [.., n, n] matrix (comb[i][j]: stream i -> j)."""
    c = torch.softmax(logits, dim=-1) + eps
    c = c / (c.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(dim=-1, keepdim=True) + eps)
        c = c / (c.sum(dim=-2, keepdim=True) + eps)
    return c


def mhc_pre(
    streams: torch.Tensor,
    fn: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    n_hc: int,
    sinkhorn_iters: int,
    hc_eps: float,
    norm_eps: float,
) -> dict[str, torch.Tensor]:
    """streams [T, n, D] -> {"input" [T, D] (dtype of streams), "pre" [T, n], "post" [T, n], "comb" [T, n, n]}."""
    t, n, d = streams.shape
    mix = _mix(streams.reshape(t, n * d), fn, norm_eps)
    pre_w, post_w, comb_w = mix.split([n_hc, n_hc, n_hc * n_hc], dim=-1)
    pre_b, post_b, comb_b = base.to(torch.float32).split([n_hc, n_hc, n_hc * n_hc])
    s = scale.to(torch.float32)
    pre = torch.sigmoid(pre_w * s[0] + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_w * s[1] + post_b)
    comb = sinkhorn((comb_w * s[2] + comb_b).view(t, n_hc, n_hc), sinkhorn_iters, hc_eps)
    collapsed = (pre.unsqueeze(-1) * streams.to(torch.float32)).sum(1).to(streams.dtype)
    return {"input": collapsed, "pre": pre, "post": post, "comb": comb}


def mhc_post(streams: torch.Tensor, y: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """X'_j = post_j * y + sum_i comb[i][j] * X_i (comb consumed transposed), float32, stored in the streams' dtype."""
    xf = streams.to(torch.float32)
    mixed = torch.einsum("tij,tid->tjd", comb, xf)
    return (post.unsqueeze(-1) * y.to(torch.float32).unsqueeze(1) + mixed).to(streams.dtype)


def hc_head(
    streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, hc_eps: float, norm_eps: float
) -> torch.Tensor:
    """The final collapse of the streams before the output norm: sum_i pre_i X_i with pre = sigmoid(mix*s+b)+eps."""
    t, n, d = streams.shape
    mix = _mix(streams.reshape(t, n * d), fn, norm_eps)
    pre = torch.sigmoid(mix * scale.to(torch.float32) + base.to(torch.float32)) + hc_eps
    return (pre.unsqueeze(-1) * streams.to(torch.float32)).sum(1).to(streams.dtype)
