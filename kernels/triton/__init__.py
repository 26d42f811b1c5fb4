"""The `triton` backend: NVFP4 activation quantization and the grouped NVFP4 GEMM as Triton kernels
(nvfp4_quant.py, grouped_gemm.py); every other op is the emulated backend's, on the same device.

The harness hands over CPU tensors; these ops move their inputs to the GPU and return tensors on the
device they got, so they slot into every check. `moe_forward` runs the whole block on the GPU with no
host sync (routing, a row plan sized before routing, the two kernels, SwiGLU, combine, the shared expert
through the same kernels), so a runtime can capture it in a CUDA graph; `fp4check graph` checks that.
`fp4check bench` calls the kernels on GPU tensors directly. Triton is imported only when an op runs: a
machine without it lists the backend with its unmet needs.
"""

from __future__ import annotations

import torch

from fp4check.kernels.gpu_backend import GpuKernelBackend
from fp4check.kernels.registry import Needs


class TritonBackend(GpuKernelBackend):
    name = "triton"
    needs = Needs(gpu=True, min_capability=(8, 9), modules=("triton",), packages=("triton",))

    @classmethod
    def quantize_kernel(cls, x: torch.Tensor, encode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

        return nvfp4_quantize(x, encode)

    @classmethod
    def gemm_kernel(cls, *args: torch.Tensor) -> torch.Tensor:
        from fp4check.kernels.triton.grouped_gemm import grouped_gemm

        return grouped_gemm(*args)
