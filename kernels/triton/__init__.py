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

from fp4check.kernels.contract import GroupedNVFP4, MoEOutput, MoEWeights, NVFP4Activation, RoutePlan
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated.shared import shared_expert as _shared_expert
from fp4check.kernels.placement import moe_forward_on_gpu
from fp4check.kernels.registry import Needs
from fp4check.references.nvfp4 import EncodeScale


def _cuda(t: torch.Tensor) -> torch.Tensor:
    return t.to("cuda", non_blocking=True)


class TritonBackend(EmulatedBackend):
    name = "triton"
    needs = Needs(gpu=True, min_capability=(8, 9), modules=("triton",), packages=("triton",))

    @staticmethod
    def nvfp4_quantize(x: torch.Tensor, global_scale: EncodeScale) -> NVFP4Activation:
        from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

        enc = global_scale.to_encode()
        packed, scales = nvfp4_quantize(_cuda(x.to(torch.bfloat16)), _cuda(enc.value))
        device = x.device
        return NVFP4Activation(
            packed.to(device), scales.to(device).view(torch.float8_e4m3fn), enc, x.shape[0], x.shape[1]
        )

    @staticmethod
    def grouped_gemm_nvfp4(a: NVFP4Activation, b: GroupedNVFP4, offsets: torch.Tensor) -> torch.Tensor:
        from fp4check.kernels.triton.grouped_gemm import grouped_gemm

        out = grouped_gemm(
            _cuda(a.packed),
            _cuda(a.scales.view(torch.uint8)),
            _cuda(a.global_scale.to_decode().value),
            _cuda(b.packed),
            _cuda(b.scales.view(torch.uint8)),
            _cuda(b.global_scale.value),
            _cuda(offsets),
        )
        return out.to(a.packed.device)

    @classmethod
    def shared_expert(cls, x: torch.Tensor, w: MoEWeights) -> torch.Tensor:
        return _shared_expert(x, w, ops=cls)

    @classmethod
    def moe_forward(
        cls, x: torch.Tensor, w: MoEWeights, token_ids: torch.Tensor, plan: RoutePlan | None = None
    ) -> MoEOutput:
        return moe_forward_on_gpu(cls, x, w, token_ids, plan)
