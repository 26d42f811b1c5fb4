"""Moving a backend's inputs and outputs between devices: tensors inside the contract's dataclasses,
dicts, lists and tuples, frozen scale objects included."""

from __future__ import annotations

import copy

import torch


def to_device(obj, device: torch.device | str):
    """A copy of obj with every tensor on `device` (objects without tensors are returned as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        new = copy.copy(obj)
        for f in obj.__dataclass_fields__:
            object.__setattr__(new, f, to_device(getattr(obj, f), device))  # frozen scales too
        return new
    return obj


def moe_forward_on_gpu(ops, x: torch.Tensor, w, token_ids: torch.Tensor, plan=None):
    """The whole MoE block on the GPU with `ops`' kernels and no host sync (routing, a row plan sized
    before routing, the grouped GEMMs, SwiGLU, combine, the shared expert), so a runtime can capture it
    in a CUDA graph; results come back to the device x came from."""
    from fp4check.kernels.emulated import moe as emu

    home = x.device
    if home.type != "cuda":
        x, w, token_ids, plan = to_device((x, w, token_ids, plan), "cuda")
    if plan is None:
        ids, weights = emu.router(x, w, token_ids)
        rows = emu.static_rows(ids.shape[0], ids.shape[1], w.n_local)
        plan = emu.plan_routes(ids, weights, w.expert_start, w.n_local, max_rows=rows)
    out = emu.moe_forward(x, w, token_ids, plan, ops=ops)
    return out if home.type == "cuda" else to_device(out, home)
