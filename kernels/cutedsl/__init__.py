"""The `cutedsl` backend: NVFP4 kernels written in the CUTLASS Python DSL (nvidia-cutlass-dsl), the kind
of kernel the seeds' runtimes use; every other op is the emulated backend's, on the same GPU.

- nvfp4_quantize: nvfp4_quant.py; e2m1 encoded in software on SM90, by the hardware conversion
  (with an exact tie-break) on SM100; code for code the exact codec.
- grouped_gemm_nvfp4: on SM90, grouped_gemm_sm90.py (a DSL kernel decodes A and a chunk of experts'
  weights to bf16, then bf16 WGMMA over the expert-sorted rows); on SM100, grouped_gemm_sm100.py
  (tcgen05 block-scaled e2m1 x e2m1, weight scales swizzled per expert), where the shapes fit its tile.
- shared_expert and moe_forward run through these ops on the GPU with no host sync (graph-capturable).

The DSL's traps (compile cache, compile before capture, current stream, canary) are runtime.py's.
The DSL is imported only when an op runs: a machine without it lists the backend with its unmet needs.
"""

from __future__ import annotations

import torch

from fp4check.kernels.gpu_backend import GpuKernelBackend, tile_experts
from fp4check.kernels.registry import Needs
from fp4check.references.swizzle import swizzle_128x4, swizzled_shape

SM100_ARCHS = ("sm_100a", "sm_103a")
CHUNK_BYTES = 1 << 30  # bf16 weights decoded at a time on SM90


def _arch() -> str:
    from fp4check.kernels.cutedsl.runtime import gpu_arch

    arch = gpu_arch()
    if arch is None:
        cc = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        raise RuntimeError(f"the cutedsl kernels target SM90 and SM100 GPUs; this one is compute capability {cc}")
    return arch


def _launch(kernel: str, tensors: list, ints: list, arch: str, stream=None) -> None:
    from fp4check.kernels.cutedsl import runtime

    runtime.launch(runtime.kernels()[kernel], tensors, ints, arch, stream=stream)


def nvfp4_quantize(x: torch.Tensor, global_encode: torch.Tensor, stream=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x bf16 [P, K] on the GPU, encode global scale fp32 [1] -> (packed uint8 [P, K/2], swizzled e4m3
    scales uint8 [Pp * Kp/16], padding zero); the same signature as the Triton kernel's."""
    arch = _arch()
    rows, cols = x.shape
    if cols % 16:
        raise ValueError(f"NVFP4 quantization takes K a multiple of 16, got {cols}")
    x = x.contiguous()
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8, device=x.device)
    rp, cp = swizzled_shape(rows, cols // 16)
    scales = torch.zeros(rp * cp, dtype=torch.uint8, device=x.device)
    if rows:
        g = global_encode.to(device=x.device, dtype=torch.float32).reshape(1)
        kernel = "nvfp4_quantize.hw_e2m1" if arch in SM100_ARCHS else "nvfp4_quantize.sw_e2m1"
        _launch(kernel, [x.view(torch.int32), packed.view(torch.int32), scales, g], [rows, cols], arch, stream)
    return packed, scales


def grouped_gemm(
    a_packed: torch.Tensor,  # uint8 [P, K/2]
    a_scales: torch.Tensor,  # uint8, swizzled
    a_decode: torch.Tensor,  # fp32 scalar
    b_packed: torch.Tensor,  # uint8 [E, N, K/2]
    b_scales: torch.Tensor,  # uint8 [E, N, K/16] linear
    b_decode: torch.Tensor,  # fp32 [E, G]
    offsets: torch.Tensor,  # int64 [E + 1]
    stream=None,
) -> torch.Tensor:
    """bf16 [P, N], the same signature as the Triton kernel's (GPU tensors, no host sync)."""
    arch = _arch()
    n_exp, n, half_k = b_packed.shape
    k, rows = half_k * 2, a_packed.shape[0]
    groups = b_decode.shape[-1]
    alpha = (a_decode.float().reshape(1, 1) * b_decode.float()).reshape(-1).contiguous()
    tiles = tile_experts(offsets, rows)
    out = torch.empty(rows, n, dtype=torch.bfloat16, device=a_packed.device)
    if rows == 0:
        return out
    a_packed, a_scales = a_packed.contiguous(), a_scales.contiguous()
    if arch in SM100_ARCHS and k % 256 == 0 and (n // groups) % 128 == 0:
        sfb = swizzle_128x4(b_scales).contiguous()
        _launch(
            "grouped_gemm.sm100",
            [a_packed, b_packed.contiguous(), a_scales, sfb, out, tiles, alpha],
            [rows, n, k, n_exp, groups],
            arch,
            stream,
        )
        return out
    sm90 = "sm_90a"  # the WGMMA path; on SM100 only for shapes the tcgen05 tile does not fit
    a_bf16 = torch.empty(rows, k, dtype=torch.bfloat16, device=a_packed.device)
    _launch(
        "dequant.swizzled", [a_packed.view(torch.int32), a_scales, a_bf16.view(torch.int32)], [rows, k], sm90, stream
    )
    per_chunk = max(1, CHUNK_BYTES // (n * k * 2))
    for e0 in range(0, n_exp, per_chunk):
        e1 = min(n_exp, e0 + per_chunk)
        w = torch.empty((e1 - e0) * n, k, dtype=torch.bfloat16, device=a_packed.device)
        _launch(
            "dequant.linear",
            [b_packed[e0:e1].contiguous().view(torch.int32), b_scales[e0:e1].contiguous(), w.view(torch.int32)],
            [(e1 - e0) * n, k],
            sm90,
            stream,
        )
        _launch(
            "grouped_gemm.sm90",
            [a_bf16, w, out, chunk_tiles(tiles, e0, e1, n_exp), alpha[e0 * groups : e1 * groups].contiguous()],
            [rows, n, k, e1 - e0, groups],
            sm90,
            stream,
        )
    return out


def chunk_tiles(tiles: torch.Tensor, e0: int, e1: int, n_exp: int) -> torch.Tensor:
    """The tile -> expert map of one chunk of experts [e0, e1): local ids for its tiles, -1 (left
    untouched) for the other experts' tiles, e1 - e0 (zeros) for tiles past the last expert, those
    written by the first chunk only."""
    mine = (tiles >= e0) & (tiles < e1)
    local = torch.where(mine, tiles - e0, torch.full_like(tiles, -1))
    if e0 == 0:
        local = torch.where(tiles >= n_exp, torch.full_like(tiles, e1 - e0), local)
    return local.contiguous()


class CuteDSLBackend(GpuKernelBackend):
    name = "cutedsl"
    needs = Needs(gpu=True, min_capability=(9, 0), modules=("cutlass",), packages=("nvidia-cutlass-dsl",))

    @staticmethod
    def _stream():
        """The stream the kernels launch on: None is torch's current stream."""
        return None

    @classmethod
    def quantize_kernel(cls, x: torch.Tensor, encode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nvfp4_quantize(x, encode, cls._stream())

    @classmethod
    def gemm_kernel(cls, *args: torch.Tensor) -> torch.Tensor:
        return grouped_gemm(*args, stream=cls._stream())
