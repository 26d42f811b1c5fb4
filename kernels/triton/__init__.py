"""The `triton` backend: Triton kernels for NVFP4 activation quantization (nvfp4_quant.py), the grouped
NVFP4 GEMM (grouped_gemm.py), clamped SwiGLU fused with the L2 requantization (swiglu_quant.py) and the
FP8 KV-cache write (kv_write.py); every other op is the emulated backend's, on the same device.

The harness hands over CPU tensors; these ops move their inputs to the GPU and return tensors on the
device they got, so they slot into every check. `prepare_weights` puts the expert weights on the GPU once,
reordered for the GEMM (weight_tiles.py), in place where they are already there; `restore_weights`
undoes that. `moe_forward` runs the whole block on the GPU with no
host sync (routing, a row plan sized before routing, the two kernels, SwiGLU, combine, the shared expert
through the same kernels), so a runtime can capture it in a CUDA graph; `fp4check graph` checks that.
`fp4check bench` calls the kernels on GPU tensors directly. Triton is imported only when an op runs: a
machine without it lists the backend with its unmet needs.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, NVFP4Activation
from fp4check.kernels.gpu_backend import GpuKernelBackend, to_cuda
from fp4check.kernels.placement import to_device
from fp4check.kernels.registry import Needs
from fp4check.references.nvfp4 import EncodeScale


class TritonBackend(GpuKernelBackend):
    name = "triton"
    needs = Needs(gpu=True, min_capability=(8, 9), modules=("triton",), packages=("triton",))

    @classmethod
    def quantize_kernel(cls, x: torch.Tensor, encode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

        return nvfp4_quantize(x, encode)

    @classmethod
    def gemm_kernel(cls, *args: torch.Tensor, layout: str = "rows") -> torch.Tensor:
        from fp4check.kernels.triton.grouped_gemm import grouped_gemm
        from fp4check.kernels.triton.weight_tiles import LAYOUT

        if layout not in ("rows", LAYOUT):
            raise ValueError(f"the triton GEMM reads weights laid out as rows or {LAYOUT}, got {layout}")
        return grouped_gemm(*args, tiled=layout == LAYOUT)

    @staticmethod
    def prepare_weights(b: GroupedNVFP4) -> GroupedNVFP4:
        """On the GPU, reordered for the GEMM (weight_tiles): in place where b is already there."""
        from fp4check.kernels.triton import weight_tiles

        if b.layout != "rows":
            return b
        packed, scales = to_cuda(b.packed), to_cuda(b.scales)
        gs = to_device(b.global_scale, "cuda")
        _, n, half_k = packed.shape
        if not weight_tiles.tileable(n, half_k * 2):
            return GroupedNVFP4(packed, scales, gs)
        weight_tiles.tile_(packed, scales)
        return GroupedNVFP4(packed, scales, gs, weight_tiles.LAYOUT)

    @staticmethod
    def restore_weights(prepared: GroupedNVFP4) -> None:
        """Undo prepare_weights' reorder (where it reordered the caller's own GPU tensors)."""
        from fp4check.kernels.triton import weight_tiles

        if prepared.layout == weight_tiles.LAYOUT:
            weight_tiles.untile_(prepared.packed, prepared.scales)

    @classmethod
    def swiglu_clamp(cls, gate_up: torch.Tensor, limit: float | None) -> torch.Tensor:
        from fp4check.kernels.triton.swiglu_quant import swiglu_quantize

        act, _, _ = swiglu_quantize(to_cuda(gate_up), limit, None)
        return act.to(gate_up.device)

    @classmethod
    def swiglu_quantize(
        cls, gate_up: torch.Tensor, limit: float | None, global_scale: EncodeScale
    ) -> tuple[torch.Tensor, NVFP4Activation]:
        """The fused kernel: (act bf16 [P, I], act quantized for L2); moe_routed takes it where a backend has it."""
        from fp4check.kernels.triton.swiglu_quant import swiglu_quantize

        enc = global_scale.to_encode()
        act, packed, scales = swiglu_quantize(to_cuda(gate_up), limit, to_cuda(enc.value))
        d = gate_up.device
        quant = NVFP4Activation(packed.to(d), scales.to(d).view(torch.float8_e4m3fn), enc, act.shape[0], act.shape[1])
        return act.to(d), quant

    @staticmethod
    def kv_cache_write(pages: torch.Tensor, block: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """In place, on the pages' device: the kernel writes GPU pages directly (CPU pages go through a GPU copy)."""
        from fp4check.kernels.triton.kv_write import kv_cache_write

        gpu = to_cuda(pages)
        kv_cache_write(gpu, block, to_cuda(slots), to_cuda(kv))
        if gpu is not pages:
            pages.copy_(gpu.cpu())
