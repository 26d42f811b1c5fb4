"""Compile every Triton kernel of the `triton` backend for a GPU architecture on a machine that has none:
Triton's driver is replaced by a stub that names the target, launches are dropped, and each autotuned
kernel is compiled at every one of its configs. The arguments are CPU tensors of the kernels' real dtypes
at small shapes (a kernel is specialized on dtypes, constexprs and 16-byte alignment, not on sizes).
Prints, per kernel, how many variants ptxas turned into a cubin and which MMA instructions their PTX holds.
It shows that a kernel builds for the target (B200: 100), not that it computes right there: that needs the
GPU. The SM90 Gluon GEMM (`grouped_gemm_sm90`, wgmma) is SM90's alone and is not among them.

Usage (repository root; Triton installed, no GPU needed): python3 bench/compile_targets.py [100]
"""

from __future__ import annotations

import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import CompiledKernel
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner

MMA = ("tcgen05.mma", "wgmma.mma_async", "mma.sync")


class StubDriver:
    """What JITFunction.run asks of the driver before it launches: a device, a stream and the target."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def every_config(self: Autotuner, *args, **kwargs) -> None:
    """Autotuner.run without timing: each config compiled (the stub has no benchmarker)."""
    for cfg in self.configs:
        self.fn.run(*args, **{**kwargs, **cfg.all_kwargs()})


def jit_of(kernel) -> triton.runtime.jit.JITFunction:
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def call_every_kernel() -> list:
    """Each public entry of the backend's kernels once or twice, on CPU tensors; returns the kernels."""
    from fp4check.kernels.triton import grouped_gemm as gg
    from fp4check.kernels.triton import kv_write, nvfp4_quant, swiglu_quant
    from fp4check.kernels.triton.weight_tiles import tile_

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1024, generator=g).to(torch.bfloat16)
    enc = torch.tensor([100.0])
    ap, asc = nvfp4_quant.nvfp4_quantize(x, enc)
    swiglu_quant.swiglu_quantize(x, 7.0, enc)
    swiglu_quant.swiglu_quantize(x, None, None)
    block = 64
    pages = torch.zeros(4, kv_write.page_bytes(block), dtype=torch.uint8)
    kv_write.kv_cache_write(pages, block, torch.arange(8), torch.randn(8, kv_write.HEAD_DIM).to(torch.bfloat16))
    e, n, k = 2, 256, 1024
    bp = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8, generator=g)
    bs = torch.randint(0x30, 0x40, (e, n, k // 16), dtype=torch.uint8, generator=g)
    bg = torch.rand(e, 2, generator=g)
    offsets = torch.tensor([0, 128, 256], dtype=torch.int64)
    for decode_asm in (True, False):
        gg.grouped_gemm(ap, asc, 1.0 / enc, bp, bs, bg, offsets, decode_asm=decode_asm, kernel="tl.dot")
    tile_(bp, bs)
    gg.grouped_gemm(ap, asc, 1.0 / enc, bp, bs, bg, offsets, tiled=True, kernel="tl.dot")
    return [
        nvfp4_quant._quant_kernel,
        swiglu_quant._swiglu_kernel,
        kv_write._kv_write_kernel,
        gg._live_kernel,
        gg._prep_a_kernel,
        gg._gemm_kernel,
    ]


def main() -> None:
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    driver.set_active(StubDriver(arch))
    CompiledKernel.run = property(lambda self: lambda *a, **k: None)  # compiled, never launched
    CompiledKernel.launch_metadata = lambda self, *a: None
    Autotuner.run = every_config
    kernels = call_every_kernel()
    print(f"Triton {triton.__version__}, target sm_{arch}")
    for kernel in kernels:
        fn = jit_of(kernel)
        built = [c for caches in fn.device_caches.values() for c in caches[0].values()]
        archs = ",".join(f"sm_{a}" for a in sorted({c.metadata.target.arch for c in built}))
        mma = {m: sum(m in c.asm["ptx"] for c in built) for m in MMA}
        cubins = sum(len(c.asm["cubin"]) > 0 for c in built)
        found = ", ".join(f"{m} in {v}" for m, v in mma.items() if v) or "no MMA"
        print(f"  {fn.__name__}: {cubins} of {len(built)} variants built for {archs}; {found}")


if __name__ == "__main__":
    main()
