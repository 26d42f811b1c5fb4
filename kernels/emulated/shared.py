"""The shared expert as served: each projection in its checkpoint format, activations quantized the way
the runtime does for that format.

- FP8 block weights: DeepSeek's fp8_gemm: activations quantized to e4m3 per 1x128 with power-of-two
  scales (DS-KER act_quant), products accumulated in fp32, output bf16.
- NVFP4 weights: the activation quantized to NVFP4 with the projection's own input scale, then a
  single-group NVFP4 GEMM over 128-padded rows (seeds 001: the shared expert as a grouped GEMM with
  num_groups = 1).
- BF16/FP32 and MXFP4 weights: dequantized, fp32 matmul, output bf16.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, MoEWeights
from fp4check.references.common import clamped_swiglu
from fp4check.references.fp8 import act_dequant_fp8, act_quant_fp8
from fp4check.references.nvfp4 import global_decode_scale


def linear_as_served(x: torch.Tensor, weight, ops=None) -> torch.Tensor:
    """x bf16 [T, K] times one checkpoint Weight [N, K] the way a serving runtime runs it -> bf16 [T, N].
    NVFP4 weights go through ops.nvfp4_quantize and ops.grouped_gemm_nvfp4 (default: the emulated ones)."""
    from fp4check.kernels.emulated import moe as emu
    from fp4check.kernels.emulated.moe import ROW_ALIGN

    ops = ops or emu
    if weight.format == "fp8-block":
        q, s = act_quant_fp8(x, 128)
        xq = act_dequant_fp8(q, s, 128)
        return (xq @ weight.dequantize().t()).to(torch.bfloat16)
    if weight.nvfp4 is not None:
        t = x.shape[0]
        rows = -(-t // ROW_ALIGN) * ROW_ALIGN
        padded = torch.zeros(rows, x.shape[1], dtype=x.dtype, device=x.device)
        padded[:t] = x
        in_scale = weight.input_scale or global_decode_scale(x.float().abs().amax())
        a = ops.nvfp4_quantize(padded, in_scale.to_encode())
        nv = weight.nvfp4
        b = GroupedNVFP4(
            nv.packed.unsqueeze(0),
            nv.scales.unsqueeze(0),
            type(nv.global_scale.to_decode())(nv.global_scale.to_decode().value.reshape(1, 1)),
        )
        offsets = torch.arange(2, device=x.device) * rows  # not torch.tensor([...]): no host copy in a graph
        return ops.grouped_gemm_nvfp4(a, b, offsets)[:t]
    return (x.to(torch.float32) @ weight.dequantize().t()).to(torch.bfloat16)


def shared_expert(x: torch.Tensor, w: MoEWeights, ops=None) -> torch.Tensor:
    s = w.shared
    gate, up = linear_as_served(x, s["w1"], ops), linear_as_served(x, s["w3"], ops)
    act = clamped_swiglu(gate, up, w.swiglu_limit).to(torch.bfloat16)
    return linear_as_served(act, s["w2"], ops)
