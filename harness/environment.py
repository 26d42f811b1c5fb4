"""What this machine has: versions, GPUs, and the packages backends need (for doctor and meta.json)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
import sys

import torch

from fp4check import __version__


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
            }
        )
    return out


def _contract_version() -> str:
    from fp4check.kernels.contract import CONTRACT_VERSION

    return CONTRACT_VERSION


def versions() -> dict[str, str | None]:
    return {
        "fp4check": __version__,
        "op contract": _contract_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch build)": torch.version.cuda,
        "driver": driver_version(),
        "triton": package_version("triton"),
        "nvidia-cutlass-dsl": package_version("nvidia-cutlass-dsl"),
        "safetensors": package_version("safetensors"),
        "torchao": package_version("torchao"),
        "platform": f"{platform.system()} {platform.machine()}",
        "executable": sys.executable,
    }
