"""The CUTLASS DSL's traps, handled once for every kernel of the `cutedsl` backend (cutedsl.md §3):

- compile cache: `cute.compile` never caches (NVIDIA/cutlass#3398), so compiled executors are kept
  per (kernel, arch, compile-time options); sizes are runtime Int32 and tensors are raw pointers, so
  one compile serves every token count; the seconds each compile took are kept (`compile_times`);
- compile before capture: compiling while a CUDA graph is being captured breaks the graph's memory
  pool (pytorch#169921), so it is refused with the fix (`warm`) named;
- current stream: every launch goes to torch's current stream (a kernel left on the default stream is
  silently missing from a captured graph);
- canary: buffers allocated before `cute.compile` are compared after it (the seed bug log once blamed
  the compiler for zeroed memory; this check settles such a claim on the spot, CanaryError if it is so);
- alignment: a pointer that breaks the alignment a kernel was compiled to assume is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fp4check.errors import InputError

CANARY_BYTES = 1 << 20


class CanaryError(RuntimeError):
    """Memory allocated before a compile changed during it."""


@dataclass(frozen=True)
class Kernel:
    """A DSL kernel as the harness compiles and launches it: its @cute.jit entry, the (dtype, alignment)
    of each pointer argument, the number of Int32 arguments after them, compile-time options, the archs
    it targets and the PTX instructions each must contain."""

    name: str
    module: str
    entry: str
    pointers: tuple
    ints: int
    options: tuple = ()
    archs: tuple[str, ...] = ("sm_90a",)
    expect: dict = field(default_factory=dict)

    def fn(self):
        import importlib

        return getattr(importlib.import_module(f"fp4check.kernels.cutedsl.{self.module}"), self.entry)


def _mod(name: str):
    import importlib

    return importlib.import_module(f"fp4check.kernels.cutedsl.{name}")


def kernels() -> dict[str, Kernel]:
    """Every kernel of the backend (importing the DSL)."""
    q, g90, g100 = _mod("nvfp4_quant"), _mod("grouped_gemm_sm90"), _mod("grouped_gemm_sm100")
    e4m3 = "cvt.rn.satfinite.e4m3x2.f32"
    return {
        k.name: k
        for k in (
            Kernel("nvfp4_quantize.sw_e2m1", "nvfp4_quant", "quantize", q.ARG_TYPES, 2, (False,),
                   ("sm_90a", "sm_100a"), {"sm_90a": (e4m3, "div.rn.f32"), "sm_100a": (e4m3, "div.rn.f32")}),
            Kernel("nvfp4_quantize.hw_e2m1", "nvfp4_quant", "quantize", q.ARG_TYPES, 2, (True,),
                   ("sm_100a",), {"sm_100a": ("cvt.rn.satfinite.e2m1x2.f32",)}),
            Kernel("dequant.swizzled", "grouped_gemm_sm90", "dequantize", g90.DEQUANT_ARG_TYPES, 2, (True,),
                   ("sm_90a",), {"sm_90a": ("cvt.rn.f16x2.e4m3x2",)}),
            Kernel("dequant.linear", "grouped_gemm_sm90", "dequantize", g90.DEQUANT_ARG_TYPES, 2, (False,),
                   ("sm_90a",), {"sm_90a": ("cvt.rn.f16x2.e4m3x2",)}),
            Kernel("grouped_gemm.sm90", "grouped_gemm_sm90", "grouped_gemm", g90.GEMM_ARG_TYPES, 5, (),
                   ("sm_90a",), {"sm_90a": ("wgmma.mma_async", "cp.async.bulk.tensor")}),
            Kernel("grouped_gemm.sm100", "grouped_gemm_sm100", "grouped_gemm", g100.ARG_TYPES, 5, (),
                   ("sm_100a",), {"sm_100a": ("tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.block16",)}),
        )
    }  # fmt: skip


def gpu_arch() -> str | None:
    """The DSL arch of this machine's GPU, or None (no GPU, or one these kernels do not target)."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {(9, 0): "sm_90a", (10, 0): "sm_100a", (10, 3): "sm_103a"}.get((major, minor))


# --- compiling --------------------------------------------------------------------------------------

_cache: dict[tuple, object] = {}
compile_times: dict[tuple[str, str], float] = {}


def _fake_args(kernel: Kernel) -> list:
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    ptrs = [make_ptr(dtype, 0, cute.AddressSpace.gmem, assumed_align=align) for dtype, align in kernel.pointers]
    return [*ptrs, *[cutlass.Int32(1)] * kernel.ints, cute.runtime.make_fake_stream()]


class _Canary:
    """Known bytes in GPU memory (and host memory) before a compile, compared after it."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1234)
        self.host = torch.randint(0, 256, (CANARY_BYTES,), dtype=torch.uint8, generator=gen)
        self.gpu = self.host.to("cuda") if torch.cuda.is_available() else None
        self.host_copy = self.host.clone()

    def check(self, what: str) -> None:
        if not torch.equal(self.host, self.host_copy):
            raise CanaryError(f"host memory allocated before compiling {what} changed during the compile")
        if self.gpu is not None:
            torch.cuda.synchronize()
            changed = int((self.gpu.cpu() != self.host_copy).sum())
            if changed:
                raise CanaryError(f"{changed} bytes of GPU memory allocated before compiling {what} changed during it")


def compile_kernel(kernel: Kernel, arch: str) -> object:
    """The compiled executor of `kernel` for `arch`, compiled once per process (canary-checked)."""
    key = (kernel.name, arch, kernel.options)
    if key in _cache:
        return _cache[key]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise InputError(
            f"cutedsl kernel {kernel.name} would compile during CUDA-graph capture: call "
            "fp4check.kernels.cutedsl.runtime.warm() (or run the op once) before capturing"
        )
    import cutlass.cute as cute

    canary = _Canary()
    start = time.perf_counter()
    compiled = cute.compile(kernel.fn(), *_fake_args(kernel), *kernel.options, options=f"--gpu-arch {arch}")
    compile_times[(kernel.name, arch)] = time.perf_counter() - start
    canary.check(f"{kernel.name} for {arch}")
    _cache[key] = compiled
    return compiled


def ptx_of(kernel: Kernel, arch: str) -> str:
    """The kernel's PTX for `arch` (compiled afresh with --keep-ptx; no GPU needed)."""
    import tempfile

    import cutlass.cute as cute

    with tempfile.TemporaryDirectory() as dump:  # --keep-ptx writes files; keep them out of the cwd
        options = f"--gpu-arch {arch} --keep-ptx --dump-dir {dump}"
        return cute.compile(kernel.fn(), *_fake_args(kernel), *kernel.options, options=options).__ptx__


def warm(arch: str | None = None) -> dict[str, float]:
    """Compile every kernel this GPU runs (before any graph capture); seconds per kernel."""
    arch = arch or gpu_arch()
    out = {}
    for kernel in kernels().values():
        if arch in kernel.archs:
            compile_kernel(kernel, arch)
            out[kernel.name] = compile_times.get((kernel.name, arch), 0.0)
    return out


# --- launching --------------------------------------------------------------------------------------


def current_stream():
    import cuda.bindings.driver as cuda

    return cuda.CUstream(torch.cuda.current_stream().cuda_stream)


def launch(kernel: Kernel, tensors: list[torch.Tensor], ints: list[int], arch: str, stream=None) -> None:
    """Run `kernel` on GPU tensors (raw pointers in the dtypes it was compiled for) on the current stream."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    compiled = compile_kernel(kernel, arch)
    ptrs = []
    for t, (dtype, align) in zip(tensors, kernel.pointers, strict=True):
        if not t.is_cuda or not t.is_contiguous():
            raise ValueError(f"{kernel.name}: inputs must be contiguous CUDA tensors")
        if t.data_ptr() % align:
            raise ValueError(
                f"{kernel.name}: a buffer at {t.data_ptr():#x} breaks the {align}-byte alignment it assumes"
            )
        ptrs.append(make_ptr(dtype, t.data_ptr(), cute.AddressSpace.gmem, assumed_align=align))
    if len(ints) != kernel.ints:
        raise ValueError(f"{kernel.name} takes {kernel.ints} sizes, got {len(ints)}")
    compiled(*ptrs, *[cutlass.Int32(i) for i in ints], stream if stream is not None else current_stream())
