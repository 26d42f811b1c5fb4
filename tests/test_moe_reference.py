"""The MoE reference on hand-computed cases (spec §2.10)."""

import math

import pytest
import torch

from fp4check.references.common import clamped_swiglu
from fp4check.references.moe import Routing, expert_mlp, moe, route


def sqrt_softplus(v: float) -> float:
    return math.sqrt(math.log1p(math.exp(v)))


def test_router_scores_selection_bias_and_weights():
    # one token, x = [1, 0]: logits are the first column of the gate
    gate = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.5, 0.0]])
    x = torch.tensor([[1.0, 0.0]])
    r = route(x, gate, topk=2, routed_scaling_factor=2.5)
    assert r.ids.tolist() == [[0, 1]]
    s0, s1 = sqrt_softplus(2.0), sqrt_softplus(1.0)
    assert torch.allclose(r.weights, torch.tensor([[s0 / (s0 + s1) * 2.5, s1 / (s0 + s1) * 2.5]]))
    # a bias selects expert 2 instead of 1 but never weights it: its weight uses the unbiased score
    r = route(x, gate, topk=2, routed_scaling_factor=2.5, bias=torch.tensor([0.0, 0.0, 5.0, 0.0]))
    assert sorted(r.ids.tolist()[0]) == [0, 2]
    s2 = sqrt_softplus(-1.0)
    w = dict(zip(r.ids[0].tolist(), r.weights[0].tolist(), strict=True))
    assert math.isclose(w[2], s2 / (s0 + s2) * 2.5, rel_tol=1e-6) and math.isclose(sum(w.values()), 2.5, rel_tol=1e-6)


def test_hash_routing_uses_token_ids():
    gate = torch.randn(8, 4)
    tid2eid = torch.tensor([[7, 3], [1, 2], [5, 6]])
    x = torch.randn(2, 4)
    r = route(x, gate, topk=2, routed_scaling_factor=1.5, tid2eid=tid2eid, token_ids=torch.tensor([2, 0]))
    assert r.ids.tolist() == [[5, 6], [7, 3]]
    assert torch.allclose(r.weights.sum(-1), torch.tensor([1.5, 1.5]))


def test_clamped_swiglu_by_hand():
    gate = torch.tensor([20.0, -1.0, 3.0])
    up = torch.tensor([15.0, 2.0, -30.0])
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    want = [silu(10.0) * 10.0, silu(-1.0) * 2.0, silu(3.0) * -10.0]  # gate clamped above only, up both sides
    assert torch.allclose(clamped_swiglu(gate, up, 10.0), torch.tensor(want))
    assert torch.allclose(clamped_swiglu(gate, up, None), torch.tensor([silu(20) * 15, silu(-1) * 2, silu(3) * -30]))


def test_expert_and_combine_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    w1 = torch.tensor([[1.0, 0.0]])  # gate = 1
    w3 = torch.tensor([[0.0, 1.0]])  # up = 2
    w2 = torch.tensor([[3.0], [-1.0]])
    st = expert_mlp(x, w1, w3, w2, 10.0)
    a = 1 / (1 + math.exp(-1)) * 2
    assert torch.allclose(st["out"], torch.tensor([[3 * a, -a]]))
    experts = {0: (w1, w3, w2), 1: (w1 * 2, w3, w2)}
    routing = Routing(None, None, torch.tensor([[0, 1]]), torch.tensor([[0.25, 0.75]]))
    out = moe(x, routing, experts, None, 10.0)
    a1 = 2 / (1 + math.exp(-2)) * 2
    assert torch.allclose(out["combine"], torch.tensor([[0.25 * 3 * a + 0.75 * 3 * a1, -0.25 * a - 0.75 * a1]]))
    assert out["l1"].shape == (1, 2, 2) and torch.equal(out["out"], out["combine"])
    # one expert-parallel rank owning expert 1 only
    local = moe(x, routing, experts, None, 10.0, local=(1, 1))
    assert torch.allclose(local["combine"], torch.tensor([[0.75 * 3 * a1, -0.75 * a1]]))
    assert bool((local["l2"][0, 0] == 0).all())


def test_reference_experts_are_read_when_asked_and_cached_only_when_small(tiny_modelopt, monkeypatch):
    """A Pro layer's experts in float32 would take 101 GB: above the cache limit each access reads and
    dequantizes one expert from the checkpoint, with the same values the cached path gives."""
    from fp4check import moe_weights
    from fp4check.checkpoint import Checkpoint

    ckpt = Checkpoint(tiny_modelopt)
    small = moe_weights.load_moe_weights(ckpt, 1).extra["experts_float"]
    first = small[3]
    assert small[3] is first and len(small) == 16 and list(small)[:2] == [0, 1]
    monkeypatch.setattr(moe_weights, "FLOAT_CACHE_BYTES", 1)
    big = moe_weights.load_moe_weights(ckpt, 1).extra["experts_float"]
    again = big[3]
    assert big[3] is not again and all(torch.equal(a, b) for a, b in zip(again, first, strict=True))
    with pytest.raises(KeyError):
        big[16]


def test_layer_weight_bytes_count_what_the_checkpoint_stores(tiny_modelopt):
    from fp4check.checkpoint import Checkpoint
    from fp4check.gpu_memory import layer_weight_bytes

    ckpt = Checkpoint(tiny_modelopt)
    n = layer_weight_bytes(ckpt, 1)
    loaded = sum(ckpt.weight(f).nbytes for f in ckpt.families() if f.startswith("layers.1."))
    assert n == loaded > 0
