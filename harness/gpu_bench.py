"""GPU timing the way the anchors do it (shared/spec/harness_patterns.md §4), and the limits every figure
is divided by, measured in the same run.

time_op: warm-up, then per run: flush the L2 (write a buffer twice its size), rotate to the next input
set, CUDA events around the call; median and the 10th/90th percentiles of >= 50 runs. The CUDA-graph
variant captures one graph per input set (after the eager warm-up compiled everything) and times replays
the same way. Limits: a large device-to-device copy (bytes read + written per second) and a large bf16
matmul (flop/s).

Clock. Under load a GPU's clock is set by its power limit, not held: on the H100 (700 W) the SM clock
was 1980 MHz idle, dipped to 1500-1900 MHz in the first ~0.3 s of any load (the power spike at its
start), and settled at 1365-1530 MHz for the bf16 matmul and 1480-1790 MHz for the grouped GEMM after
~1 s at 700 W (nvidia-smi every 50 ms, bench/results/h100_power_regimes_20261122j.txt). A short run
from idle therefore lands wherever that ramp happens to be, and a limit measured in its first 70 ms and
a kernel timed over the next 300 ms are not at one clock. `warm_s` runs the same work
untimed first, so that every figure of a bench is its steady state at the board's power limit (`fp4check
bench --warm`), which is also where a serving GPU runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

WARMUP = 5
L2_FLUSH_BYTES = 256 << 20  # > 2x the L2 of H100 (50 MB) and B200 (126 MB)


@dataclass
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    runs: int

    def as_dict(self) -> dict:
        return {"median_us": self.median_us, "p10_us": self.p10_us, "p90_us": self.p90_us, "runs": self.runs}


def _summary(ms: list[float]) -> Timing:
    us = sorted(x * 1000 for x in ms)
    q = statistics.quantiles(us, n=10)
    return Timing(statistics.median(us), q[0], q[-1], len(us))


def time_op(fn: Callable, inputs: list, runs: int = 50, graph: bool = False, warm_s: float = 0.0) -> Timing:
    """fn(*inputs[i]) timed over `runs` runs, inputs rotated, L2 flushed before each, after warm_s seconds
    of the same runs untimed (the module docstring's Clock)."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for i in range(WARMUP):
        fn(*inputs[i % len(inputs)])
    calls = [lambda args=args: fn(*args) for args in inputs]
    if graph:
        graphs = []
        for args in inputs:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(*args)
            graphs.append(g)
        calls = [g.replay for g in graphs]
    torch.cuda.synchronize()
    until, i = time.perf_counter() + warm_s, 0
    while time.perf_counter() < until:
        flush.zero_()
        calls[i % len(calls)]()
        i += 1
        if i % 4 == 0:  # the host no further ahead than a few runs: warm_s is the GPU's busy time
            torch.cuda.synchronize()
    events = []
    for i in range(runs):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls[i % len(calls)]()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in events])


def copy_bandwidth(runs: int = 50, nbytes: int = 1 << 30, warm_s: float = 0.0) -> float:
    """Bytes moved (read + write) per second by a device-to-device copy of nbytes."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_op(lambda: dst.copy_(src), [()], runs, warm_s=warm_s)
    return 2 * nbytes / (t.median_us * 1e-6)


def matmul_flops(runs: int = 50, n: int = 8192, warm_s: float = 0.0) -> float:
    """flop/s of a bf16 n x n x n matmul with fp32 accumulation (torch's cuBLAS)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = time_op(lambda: a @ b, [()], runs, warm_s=warm_s)
    return 2 * n**3 / (t.median_us * 1e-6)
