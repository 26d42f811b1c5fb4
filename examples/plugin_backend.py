"""An fp4check backend plugin that wraps an outside fused MoE runner as it is.

Run it:  fp4check layer --type C4A --only moe --backend examples/plugin_backend.py:FusedRunnerBackend

`ThirdPartyFusedMoE` stands for the runner you bring (a CuTeDSL or CUTLASS MoE, vLLM's fused_experts,
...): it has its own API. The backend class adapts fp4check's op contract (fp4check.kernels.contract)
to it: it receives the layer's prepared NVFP4 weights and the routing plan, calls the runner, and
returns the output plus whatever intermediates the runner exposes, so that fp4check can compare them
stage by stage. Stages it does not return are reported as skipped.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import MoEOutput, MoEWeights, RoutePlan
from fp4check.kernels.emulated.moe import plan_routes, router
from fp4check.kernels.emulated.shared import shared_expert
from fp4check.kernels.registry import Needs
from fp4check.references.e2m1 import e2m1_decode, unpack_e2m1
from fp4check.references.fp8 import e4m3_decode


class ThirdPartyFusedMoE:
    """A stand-in for an outside runner: dequantize the experts to bf16 once, then run each expert's
    tokens through bf16 matmuls (what vLLM's EMULATION path and many bring-up runners do)."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, limit: float | None):
        self.w13, self.w2, self.limit = w13, w2, limit  # bf16 [E, 2I, D], [E, D, I]

    def __call__(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.w2.shape[1], dtype=torch.float32)
        i = self.w13.shape[1] // 2
        for e in topk_ids.unique().tolist():
            tok, slot = (topk_ids == e).nonzero(as_tuple=True)
            h = x[tok].float() @ self.w13[e].float().t()
            g, u = h[:, :i], h[:, i:]
            if self.limit is not None:
                g, u = g.clamp(max=self.limit), u.clamp(-self.limit, self.limit)
            act = (torch.nn.functional.silu(g) * u).to(torch.bfloat16)
            out[tok] += topk_weights[tok, slot, None] * (act.float() @ self.w2[e].float().t())
        return out


def _dequant(packed: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """[E, N, K] bf16 from NVFP4 packed/scales and per-expert, per-column-group decode scales [E, G]."""
    e, n, _ = packed.shape
    vals = e2m1_decode(unpack_e2m1(packed)).view(e, n, -1, 16) * e4m3_decode(scales).unsqueeze(-1)
    groups = global_scale.reshape(e, -1)
    return (
        (vals.view(e, groups.shape[1], n // groups.shape[1], -1) * groups.view(e, -1, 1, 1))
        .view(e, n, -1)
        .to(torch.bfloat16)
    )


class FusedRunnerBackend:
    name = "example-fused-runner"
    needs = Needs()  # e.g. Needs(gpu=True, min_capability=(10, 0), modules=("my_runner",), packages=("my-runner",))

    def __init__(self):
        self._runner: ThirdPartyFusedMoE | None = None
        self._layer = None

    def moe_forward(
        self, x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, plan: RoutePlan | None = None
    ) -> MoEOutput:
        if self._layer is not w:  # weights are prepared once per layer, as a runner does at load time
            w13 = _dequant(w.w13.packed, w.w13.scales, w.w13.global_scale.value)
            w2 = _dequant(w.w2.packed, w.w2.scales, w.w2.global_scale.value)
            self._runner, self._layer = ThirdPartyFusedMoE(w13, w2, w.swiglu_limit), w
        if plan is None:
            ids, weights = router(x, w, token_ids)
            plan = plan_routes(ids, weights, w.expert_start, w.n_local)
        local = plan.local
        routed = self._runner(x, local.clamp(min=0), torch.where(local >= 0, plan.weights, 0.0))
        shared = shared_expert(x, w)
        out = (routed + shared.float()).to(torch.bfloat16)
        return MoEOutput(out, {"route": (plan.ids, plan.weights), "combine": routed, "shared": shared, "out": out})
