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
        "triton",
        "Triton NVFP4 quantize and grouped GEMM (software e2m1 decode, bf16 MMA), the rest emulated",
        Needs(gpu=True, min_capability=(8, 9), modules=("triton",), packages=("triton",)),
    ),
    BackendInfo(
        "cutedsl",
        "CUTLASS Python DSL NVFP4 kernels (SM90 software e2m1, SM100 tcgen05)",
        Needs(gpu=True, min_capability=(9, 0), modules=("cutlass",), packages=("nvidia-cutlass-dsl",)),
    ),
)


# --- finding backends ------------------------------------------------------------------------------

ENTRY_POINT_GROUP = "fp4check.backends"
_BUILTIN_IMPL = {
    "reference": ("fp4check.kernels.reference", "ReferenceBackend"),
    "emulated": ("fp4check.kernels.emulated", "EmulatedBackend"),
    "triton": ("fp4check.kernels.triton", "TritonBackend"),
    "cutedsl": ("fp4check.kernels.cutedsl", "CuteDSLBackend"),
}


def provides(backend: object, op: str) -> bool:
    return callable(getattr(backend, op, None))


def backend_needs(backend: object) -> Needs:
    needs = getattr(backend, "needs", None)
    return needs if isinstance(needs, Needs) else Needs()


def _instantiate(obj: object, spec: str) -> object:
    import inspect

    if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "name")):
        obj = obj()
    if not isinstance(getattr(obj, "name", None), str):
        from fp4check.errors import InputError

        raise InputError(f"backend {spec} has no `name` attribute: a backend is an object with a name, needs and ops")
    return obj


def load_backend(spec: str, inject: list[str] | tuple[str, ...] = ()) -> object:
    """A backend by built-in name, entry point name (group fp4check.backends), `package.module:attr` or
    `path/to/file.py:attr`. attr may be a backend object, a class or a factory taking no arguments.
    `inject` switches faults on in the emulated backend (kernels/emulated/faults.py)."""
    import importlib
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    from fp4check.errors import InputError

    if inject:
        if spec != "emulated":
            raise InputError(f"--inject works on the emulated backend, not on {spec}")
        from fp4check.kernels.emulated.faults import FaultyEmulated

        return FaultyEmulated(list(inject))
    if spec in _BUILTIN_IMPL:
        module, attr = _BUILTIN_IMPL[spec]
        return _instantiate(getattr(importlib.import_module(module), attr), spec)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                return _instantiate(ep.load(), spec)
            except (ImportError, AttributeError) as e:
                raise InputError(f"backend entry point {spec} ({ep.value}) does not load: {e}") from None
    if ":" not in spec:
        known = ", ".join(sorted(_BUILTIN_IMPL))
        raise InputError(f"unknown backend {spec!r}: use {known}, an entry point, module:attr or file.py:attr")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"backend file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"fp4check_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # a plugin file that fails to import is bad input, reported in one line
            raise InputError(f"backend file {path} fails to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise InputError(f"backend module {target} does not import: {e}") from None
    if not hasattr(module, attr):
        raise InputError(f"backend {spec}: {target} has no attribute {attr}")
    return _instantiate(getattr(module, attr), spec)
