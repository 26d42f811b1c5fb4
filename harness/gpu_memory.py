"""GPU memory and wall time of a --device cuda run, against the bytes of the layers' weights as stored
(packed NVFP4/FP8, read from the checkpoint's headers without loading anything)."""

from __future__ import annotations

import time

import torch

from fp4check.checkpoint import Checkpoint

GIB = 1 << 30
GOAL_RATIO = 1.5  # peak <= 1.5 x (weights + activations); measured here against the weights alone


def layer_weight_bytes(ckpt: Checkpoint, layer: int) -> int:
    prefix = f"layers.{layer}."
    return sum(e.nbytes for f in ckpt.families() if f.startswith(prefix) for e in ckpt.member_entries(f).values())


class GpuMeter:
    def __init__(self, ckpt: Checkpoint, layers: list[int]):
        self.weight_bytes = sum(layer_weight_bytes(ckpt, n) for n in layers)
        self.t0 = 0.0

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - self.base
        return {
            "device_name": torch.cuda.get_device_name(),
            "peak_allocated_bytes": peak,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "weight_bytes": self.weight_bytes,
            "peak_over_weights": peak / self.weight_bytes if self.weight_bytes else None,
            "goal_ratio": GOAL_RATIO,
            "wall_s": time.perf_counter() - self.t0,
        }

    @staticmethod
    def line(m: dict) -> str:
        ratio = m["peak_over_weights"]
        ok = ratio is not None and ratio <= GOAL_RATIO
        colour = "green" if ok else "red"
        return (
            f"GPU {m['device_name']}: peak {m['peak_allocated_bytes'] / GIB:.2f} GiB allocated for "
            f"{m['weight_bytes'] / GIB:.2f} GiB of layer weights as stored = [{colour}]{ratio:.2f}x[/{colour}] "
            f"(goal <= {GOAL_RATIO}x weights + activations); wall {m['wall_s']:.1f} s"
        )
