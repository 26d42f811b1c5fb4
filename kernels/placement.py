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
