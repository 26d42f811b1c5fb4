"""The `reference` backend: the float32 reference run through the plugin API.

It provides the router, the whole MoE block and the whole attention (served mode: the FP8 KV cache's
rounding, nothing else) on dequantized weights, and mHC, so checking it against the reference must give
cosine exactly 1.0 (a test of the harness itself). It has no NVFP4 or paged-cache fine ops.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import AttentionOutput, AttentionWeights, MoEOutput, MoEWeights, RoutePlan
from fp4check.kernels.emulated.moe import router
from fp4check.kernels.registry import Needs
from fp4check.references import attention as ref_attn
from fp4check.references import mhc as ref_mhc
from fp4check.references import moe as ref


class ReferenceBackend:
    name = "reference"
    needs = Needs()

    router = staticmethod(router)  # routing is float32 math in every backend: one function
    mhc_pre = staticmethod(ref_mhc.mhc_pre)
    mhc_post = staticmethod(ref_mhc.mhc_post)

    @staticmethod
    def attention_forward(x: torch.Tensor, w: AttentionWeights, positions: torch.Tensor) -> AttentionOutput:
        s = ref_attn.attention_prefill(x, w.params, "served")
        stages = {"q": s["q"], "kv": s["kv"], "kv_read": s["kv_cache"], "core": s["core"], "out": s["out"]}
        if w.params.ratio:
            stages["compress"] = s["entries"]
        if "index_topk" in s:
            stages["indexer"], stages["index_scores"] = s["index_topk"], s["index_scores"]
        return AttentionOutput(s["out"], stages)

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
