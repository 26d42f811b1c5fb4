"""The `emulated` backend: the exact NVFP4 MoE pipeline in plain torch (see moe.py)."""

from __future__ import annotations

from fp4check.kernels.emulated import moe as _moe
from fp4check.kernels.emulated.shared import shared_expert as _shared_expert
from fp4check.kernels.registry import Needs


class EmulatedBackend:
    name = "emulated"
    needs = Needs()

    router = staticmethod(_moe.router)
    nvfp4_quantize = staticmethod(_moe.quantize_activation)
    grouped_gemm_nvfp4 = staticmethod(_moe.grouped_gemm_nvfp4)
    swiglu_clamp = staticmethod(_moe.swiglu_clamp)
    moe_scatter = staticmethod(_moe.moe_scatter)
    shared_expert = staticmethod(_shared_expert)
    plan_routes = staticmethod(_moe.plan_routes)

    def moe_forward(self, x, w, token_ids, plan=None):
        """The whole block through this backend's own ops, so a subclass that replaces one op (a plugin,
        an injected fault) runs its version in the propagated pipeline too."""
        return _moe.moe_forward(x, w, token_ids, plan, ops=self)
