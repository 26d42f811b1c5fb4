"""Sparse attention with sink, key sets and the indexer: closed forms and small hand cases."""

import torch

from fp4check.references.sparse_attention import (
    hca_indices,
    indexer_scores,
    indexer_topk,
    sparse_attention,
    window_indices,
)

G = torch.Generator().manual_seed(2)


def test_sink_only_in_the_denominator():
    q, kv = torch.randn(5, 3, 8, generator=G), torch.randn(7, 8, generator=G)
    idx = torch.randint(0, 7, (5, 4), generator=G)
    no_sink = sparse_attention(q, kv, idx, torch.full((3,), -float("inf")), 0.3)
    scores = torch.einsum("thd,tkd->thk", q, kv[idx]) * 0.3
    want = torch.einsum("thk,tkd->thd", scores.softmax(-1), kv[idx])
    assert torch.allclose(no_sink, want, atol=1e-6)  # sink -inf: plain softmax attention
    sink = torch.tensor([0.0, 2.0, 50.0])
    with_sink = sparse_attention(q, kv, idx, sink, 0.3)
    shrink = scores.exp().sum(-1) / (scores.exp().sum(-1) + sink.exp().view(1, 3))
    assert torch.allclose(with_sink, no_sink * shrink.unsqueeze(-1), atol=1e-5)  # same direction, shrunk
    assert float(with_sink[:, 2].abs().max()) < 1e-10  # a huge sink absorbs everything


def test_invalid_indices_are_skipped_and_order_does_not_matter():
    q, kv = torch.randn(2, 1, 4, generator=G), torch.randn(5, 4, generator=G)
    idx = torch.tensor([[0, 3, -1, -1], [4, -1, 2, 1]])
    out = sparse_attention(q, kv, idx, torch.zeros(1), 0.5)
    ref = sparse_attention(q, kv, torch.tensor([[3, 0, -1, -1], [1, 2, 4, -1]]), torch.zeros(1), 0.5)
    assert torch.allclose(out, ref, atol=1e-6)
    empty = sparse_attention(q, kv, torch.full((2, 3), -1), torch.zeros(1), 0.5)
    assert bool((empty == 0).all())  # nothing to attend: only the sink, the output is 0


def test_key_sets():
    w = window_indices(5, 3)
    assert w.tolist() == [[-1, -1, 0], [-1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    h = hca_indices(9, 4, 2)
    assert h[2].tolist() == [-1, -1] and h[3].tolist() == [0, -1] and h[8].tolist() == [0, 1]


def test_indexer_scores_relu_and_causal_topk():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one query, two heads
    keys = torch.tensor([[2.0, -1.0], [-3.0, 4.0]])
    w = torch.tensor([[0.5, 2.0]])
    s = indexer_scores(q, keys, w)
    assert s.tolist() == [[0.5 * 2 + 2.0 * 0, 0.5 * 0 + 2.0 * 4]]
    scores = torch.tensor([[5.0, 9.0, 1.0], [5.0, 9.0, 1.0], [5.0, 9.0, 1.0]])
    top = indexer_topk(scores.repeat(4, 1)[:12], topk=2, ratio=4)  # 12 queries, 3 entries
    assert top[2].tolist() == [-1, -1]  # before the first window closes nothing is visible
    assert top[3].tolist() == [0, -1]  # only entry 0
    assert top[11].tolist() == [1, 0]  # all three visible: the two best
    assert indexer_topk(torch.zeros(1, 0), 4, 4).shape == (1, 0)  # no compressed entries yet
