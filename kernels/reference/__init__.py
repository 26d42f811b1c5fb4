"""The `reference` backend: the float32 reference run through the plugin API.

It provides the router and the whole MoE block on dequantized weights, so checking it against the
reference must give cosine exactly 1.0 (a test of the harness itself). It has no NVFP4 fine ops.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import MoEOutput, MoEWeights, RoutePlan
from fp4check.kernels.emulated.moe import router
from fp4check.kernels.registry import Needs
from fp4check.references import moe as ref


class ReferenceBackend:
    name = "reference"
    needs = Needs()

    router = staticmethod(router)  # routing is float32 math in every backend: one function

    @staticmethod
    def moe_forward(
        x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, plan: RoutePlan | None = None
    ) -> MoEOutput:
        if plan is None:
            ids, weights = router(x, w, token_ids)
        else:
            ids, weights = plan.ids, plan.weights
        routing = ref.Routing(None, None, ids, weights)
        stages = ref.moe(
            x,
            routing,
            w.extra["experts_float"],
            w.extra["shared_float"],
            w.swiglu_limit,
            local=(w.expert_start, w.n_local),
        )
        stages["route"] = (ids, weights)
        return MoEOutput(stages["out"], stages)
