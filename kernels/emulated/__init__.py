"""The `emulated` backend: the exact served pipeline in plain torch: NVFP4 MoE (moe.py), attention with
its projections in the checkpoint's formats and the paged FP8 KV cache (attention.py, kv_cache.py)."""

from __future__ import annotations

from fp4check.kernels.emulated import attention as _attn
from fp4check.kernels.emulated import moe as _moe
from fp4check.kernels.emulated.shared import shared_expert as _shared_expert
from fp4check.kernels.registry import Needs
from fp4check.references import mhc as _mhc


class EmulatedBackend(_attn.AttentionOps):
    name = "emulated"
    needs = Needs()

    router = staticmethod(_moe.router)
    nvfp4_quantize = staticmethod(_moe.quantize_activation)
    grouped_gemm_nvfp4 = staticmethod(_moe.grouped_gemm_nvfp4)
    swiglu_clamp = staticmethod(_moe.swiglu_clamp)
    moe_scatter = staticmethod(_moe.moe_scatter)
    shared_expert = staticmethod(_shared_expert)
    plan_routes = staticmethod(_moe.plan_routes)
    mhc_pre = staticmethod(_mhc.mhc_pre)
    mhc_post = staticmethod(_mhc.mhc_post)

    def moe_forward(self, x, w, token_ids, plan=None):
        """The whole block through this backend's own ops, so a subclass that replaces one op (a plugin,
        an injected fault) runs its version in the propagated pipeline too."""
        return _moe.moe_forward(x, w, token_ids, plan, ops=self)

    def attention_forward(self, x, w, positions):
        """A prefill through this backend's own attention ops (see moe_forward)."""
        return _attn.attention_forward(x, w, positions, ops=self)
