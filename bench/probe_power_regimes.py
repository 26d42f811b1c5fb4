"""Probe: the bf16 matmul (the bench's compute limit) and the grouped GEMM (skewed routing, the Pro shapes,
the kernel `grouped_gemm` picks) timed in three clock regimes, with the SM clock and board power that
nvidia-smi sampled every 50 ms during each timed window:

- cool: each after COOL_S seconds idle, 50 runs of the matmul, 30 of the GEMM: the first ~0.3 s of a load,
  where the clock dips and recovers (the power spike at a load's start), so it lands anywhere in that ramp;
- sustained: each after SUSTAIN_S seconds of its own work (`fp4check bench`'s default --warm), at the
  board's power limit;
- interleaved: matmul and GEMM alternating run by run after SUSTAIN_S seconds of that, each timed on its
  own events: both at one clock, the ratio side by side.

Usage (GPU machine, repository root): python3 bench/probe_power_regimes.py [l1,l2]
"""

from __future__ import annotations

import csv
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from fp4check.commands.bench import PRO, SUSTAIN_S, _gemm_case, _tiled_inputs
from fp4check.gpu_bench import L2_FLUSH_BYTES, time_op
from fp4check.kernels.triton import grouped_gemm as gg
from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

COOL_S = 3.0
N = 8192  # the bench's matmul


class Smi:
    """nvidia-smi sampling SM clock, power and the power-cap throttle flag into a file, read per window."""

    def __init__(self) -> None:
        self.out = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
        self.path = self.out.name
        query = "timestamp,clocks.sm,power.draw,clocks_throttle_reasons.sw_power_cap"
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "50"],
            stdout=self.out,
            stderr=subprocess.DEVNULL,
        )

    def window(self, t0: float, t1: float) -> str:
        rows = []
        with open(self.path) as f:
            for r in csv.reader(f):
                try:
                    t = datetime.datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                    rows.append((t, float(r[1]), float(r[2]), r[3].strip() == "Active"))
                except (ValueError, IndexError):
                    continue
        inside = [r for r in rows if t0 <= r[0] <= t1]
        if not inside:
            return "no nvidia-smi sample"
        clk = statistics.median(r[1] for r in inside)
        pw = statistics.median(r[2] for r in inside)
        capped = sum(r[3] for r in inside) / len(inside)
        return f"SM {clk:.0f} MHz, {pw:.0f} W median of {len(inside)} samples, power-capped {capped:.0%}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.out.close()


def timed(fn, inputs: list, runs: int, warm_s: float, smi: Smi) -> tuple:
    torch.cuda.synchronize()
    t0 = time.time()
    t = time_op(fn, inputs, runs, warm_s=warm_s)
    return t, smi.window(t0 + warm_s, time.time())


def interleaved(mm, gemm, tiled: list, runs: int, smi: Smi) -> tuple:
    """Matmul and GEMM one after the other, run by run, each on its own events, after SUSTAIN_S of that
    (time_op's warm-up of the pair; its own two timed runs are not used)."""
    time_op(lambda *x: (mm(), gemm(*x)), tiled, 2, warm_s=SUSTAIN_S)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    t0, ev = time.time(), []
    for i in range(runs):
        e = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        e[0].record()
        mm()
        e[1].record()
        flush.zero_()
        e[2].record()
        gemm(*tiled[i % len(tiled)])
        e[3].record()
        ev.append(e)
    torch.cuda.synchronize()
    t_mm = statistics.median(e[0].elapsed_time(e[1]) for e in ev)
    t_g = statistics.median(e[2].elapsed_time(e[3]) for e in ev)
    return t_mm, t_g, smi.window(t0, time.time())


def main() -> None:
    ops = (sys.argv[1] if len(sys.argv) > 1 else "l1,l2").split(",")
    smi = Smi()
    a = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, N, device="cuda", dtype=torch.bfloat16)
    mm = lambda: a @ b  # noqa: E731
    mm_flop = 2 * N**3
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; COOL_S {COOL_S}, SUSTAIN_S {SUSTAIN_S}")
    try:
        for op in ops:
            inputs, rows, useful, counts = _gemm_case(op, PRO[op], 4096, 6, "skewed", 0, 2, nvfp4_quantize)
            tiled = _tiled_inputs(inputs)
            del inputs
            gemm = lambda *x: gg.grouped_gemm(*x, tiled=True)  # noqa: E731
            gemm(*tiled[0])  # compiled before any timing
            torch.cuda.synchronize()
            print(f"{op} skewed (rows {rows}), kernel {gg.tuned_config()}", flush=True)
            for regime, reps, warm in (("cool", 3, 0.0), ("sustained", 2, SUSTAIN_S)):
                for rep in range(reps):
                    if not warm:
                        time.sleep(COOL_S)
                    tm, wm = timed(mm, [()], 50, warm, smi)
                    if not warm:
                        time.sleep(COOL_S)
                    tg, wg = timed(gemm, tiled, 30 if not warm else 50, warm, smi)
                    tf_mm = mm_flop / tm.median_us / 1e6
                    tf_g = useful / tg.median_us / 1e6
                    print(
                        f"  {regime} {rep}: matmul {tf_mm:.0f} TFLOP/s ({wm}); GEMM {tg.median_us / 1e3:.3f} ms, "
                        f"{tf_g:.0f} TFLOP/s ({wg}): {tf_g / tf_mm:.1%} of the matmul",
                        flush=True,
                    )
            t_mm, t_g, w = interleaved(mm, gemm, tiled, 50, smi)
            tf_mm, tf_g = mm_flop / t_mm / 1e9, useful / t_g / 1e9
            print(
                f"  interleaved: matmul {tf_mm:.0f} TFLOP/s, GEMM {t_g:.3f} ms, {tf_g:.0f} TFLOP/s ({w}): "
                f"{tf_g / tf_mm:.1%} of the matmul",
                flush=True,
            )
    finally:
        smi.stop()
        os.unlink(smi.path)


if __name__ == "__main__":
    main()
