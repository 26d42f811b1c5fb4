"""The `triton` backend: NVFP4 activation quantization and the grouped NVFP4 GEMM as Triton kernels
(nvfp4_quant.py, grouped_gemm.py); every other op is the emulated backend's, on the same device.

The harness hands over CPU tensors; these ops move their inputs to the GPU and return CPU tensors, so
they slot into every check. `fp4check bench` calls the kernels on GPU tensors directly. Triton is
imported only when an op runs: a machine without it lists the backend with its unmet needs.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, NVFP4Activation
from fp4check.kernels.emulated import EmulatedBackend
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
