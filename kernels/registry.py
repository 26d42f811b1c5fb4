"""The backends fp4check knows by name, what each needs, and whether this machine has it.

A backend declares its needs (a CUDA GPU, a minimum compute capability, Python packages); a backend
whose needs are not met is skipped with the reason, never an error. `fp4check doctor` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fp4check.environment import has_module


@dataclass(frozen=True)
class Needs:
    gpu: bool = False
    min_capability: tuple[int, int] | None = None
    modules: tuple[str, ...] = ()  # importable module names
    packages: tuple[str, ...] = field(default=())  # the pip names to install them

    def describe(self) -> str:
        parts = []
        if self.gpu:
            cc = (
                f" (compute capability >= {self.min_capability[0]}.{self.min_capability[1]})"
                if self.min_capability
                else ""
            )
            parts.append(f"CUDA GPU{cc}")
        parts += list(self.packages)
        return ", ".join(parts) or "nothing"

    def unmet(self) -> str | None:
        """Why these needs are not met here, or None."""
        for module, package in zip(self.modules, self.packages, strict=True):
            if not has_module(module):
                return f"package {package} is not installed (pip install {package})"
        if self.gpu:
            if not torch.cuda.is_available():
                return "no CUDA GPU visible to torch"
            if self.min_capability is not None:
                cc = torch.cuda.get_device_capability()
                if cc < self.min_capability:
                    want = f"{self.min_capability[0]}.{self.min_capability[1]}"
                    return f"GPU compute capability {cc[0]}.{cc[1]} is below the {want} it needs"
        return None


@dataclass(frozen=True)
class BackendInfo:
    name: str
    description: str
    needs: Needs


BUILTIN_BACKENDS = (
    BackendInfo("reference", "BF16/FP32 reference math on dequantized weights", Needs()),
    BackendInfo("emulated", "pure-torch NVFP4 pipeline in the kernels' own layouts (CPU or GPU)", Needs()),
    BackendInfo(
        "triton", "Triton NVFP4 quantize and grouped GEMM", Needs(gpu=True, modules=("triton",), packages=("triton",))
    ),
    BackendInfo(
        "cutedsl",
        "CUTLASS Python DSL NVFP4 kernels (SM90 software e2m1, SM100 tcgen05)",
        Needs(gpu=True, min_capability=(9, 0), modules=("cutlass",), packages=("nvidia-cutlass-dsl",)),
    ),
)
