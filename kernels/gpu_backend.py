"""What the GPU kernel backends (`triton`, `cutedsl`) share: the contract's NVFP4 ops wrapped around two
raw kernels on GPU tensors, and the whole MoE block on the GPU through them.

A subclass gives `quantize_kernel(x bf16 [P, K], encode fp32 [1]) -> (packed uint8 [P, K/2], swizzled
scales uint8)` and `gemm_kernel(a_packed, a_scales, a_decode, b_packed, b_scales, b_decode, offsets) ->
bf16 [P, N]`, all on the GPU. The harness hands over CPU tensors; the ops move their inputs to the GPU
and return tensors on the device they got, so they slot into every check.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, MoEOutput, MoEWeights, NVFP4Activation, RoutePlan
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated import moe as emu
from fp4check.kernels.emulated.shared import shared_expert as _shared_expert
from fp4check.kernels.placement import to_device
from fp4check.references.nvfp4 import EncodeScale


def tile_experts(offsets: torch.Tensor, rows: int) -> torch.Tensor:
    """int32 [ceil(rows/128)]: the expert of each 128-row tile, E for tiles past offsets[-1] (a plan sized
    before routing); on the GPU, no host sync. Both GPU backends' grouped GEMMs take it."""
    starts = torch.arange(0, rows, 128, device=offsets.device, dtype=offsets.dtype)
    return torch.searchsorted(offsets[1:].contiguous(), starts, right=True).to(torch.int32)


def to_cuda(t: torch.Tensor) -> torch.Tensor:
    return t.to("cuda", non_blocking=True)


class GpuKernelBackend(EmulatedBackend):
    @classmethod
    def quantize_kernel(cls, x: torch.Tensor, encode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def gemm_kernel(cls, a_packed, a_scales, a_decode, b_packed, b_scales, b_decode, offsets) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def nvfp4_quantize(cls, x: torch.Tensor, global_scale: EncodeScale) -> NVFP4Activation:
        enc = global_scale.to_encode()
        packed, scales = cls.quantize_kernel(to_cuda(x.to(torch.bfloat16)), to_cuda(enc.value))
        device = x.device
        return NVFP4Activation(
            packed.to(device), scales.to(device).view(torch.float8_e4m3fn), enc, x.shape[0], x.shape[1]
        )

    @classmethod
    def grouped_gemm_nvfp4(cls, a: NVFP4Activation, b: GroupedNVFP4, offsets: torch.Tensor) -> torch.Tensor:
        layout = {} if b.layout == "rows" else {"layout": b.layout}  # only a backend's own prepare tags others
        out = cls.gemm_kernel(
            to_cuda(a.packed),
            to_cuda(a.scales.view(torch.uint8)),
            to_cuda(a.global_scale.to_decode().value),
            to_cuda(b.packed),
            to_cuda(b.scales.view(torch.uint8)),
            to_cuda(b.global_scale.value),
            to_cuda(offsets),
            **layout,
        )
        return out.to(a.packed.device)

    @classmethod
    def shared_expert(cls, x: torch.Tensor, w: MoEWeights) -> torch.Tensor:
        return _shared_expert(x, w, ops=cls)

    @classmethod
    def moe_forward(
        cls, x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, plan: RoutePlan | None = None
    ) -> MoEOutput:
        """The whole block on the GPU with no host sync (routing, a row plan sized before routing, the
        kernels, SwiGLU, combine, the shared expert), so a runtime can capture it in a CUDA graph."""
        home = x.device
        if home.type != "cuda":
            x, w, token_ids, plan = to_device((x, w, token_ids, plan), "cuda")
        if plan is None:
            ids, weights = emu.router(x, w, token_ids)
            rows = emu.static_rows(ids.shape[0], ids.shape[1], w.n_local)
            plan = emu.plan_routes(ids, weights, w.expert_start, w.n_local, max_rows=rows)
        out = emu.moe_forward(x, w, token_ids, plan, ops=cls)
        return out if home.type == "cuda" else to_device(out, home)
