"""Probe: the Triton grouped GEMM's tl.dot kernel at explicit tiles (not only the autotuner's pick), at the
Pro MoE shapes, with the registers, shared memory and resident CTAs per SM of each compiled kernel.

Usage (GPU machine, repository root): python3 bench/probe_gemm_configs.py [l1|l2] [uniform|skewed] [grid]
Prints one line per config: median ms of 20 runs (L2 flushed, inputs rotated), useful TFLOP/s, cos
against the first config's output.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

import torch
import triton

from fp4check.commands.bench import PRO, _gemm_case, _tiled_inputs
from fp4check.gpu_bench import matmul_flops, time_op
from fp4check.kernels.gpu_backend import tile_experts
from fp4check.kernels.triton import grouped_gemm as gg
from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

SMEM_PER_SM = 228 * 1024
REGS_PER_SM = 65536


def launcher(cfg: dict):
    bn, bt, swap, warps, stages, one = cfg["BN"], cfg["BT"], cfg["SWAP"], cfg["W"], cfg["S"], cfg["ONE"]
    apk = cfg.get("AP", False)
    info = {}

    def run(ap, asc, dec, bp, bs, bg, offsets):
        rows, half_k = ap.shape
        k = half_k * 2
        e, n, _ = bp.shape
        groups = bg.shape[-1]
        out = torch.empty(rows, n, dtype=torch.bfloat16, device=ap.device)
        cp = -(-(k // 16) // 4) * 4
        a16 = ap if apk else torch.empty(rows, k, dtype=torch.bfloat16, device=ap.device)
        live = torch.zeros(rows // 64, dtype=torch.int32, device=ap.device)
        gg._prep_a_kernel[(rows // 64, k // gg.K_STEP)](ap, asc, a16, live, k, cp // 4, WRITE=not apk, num_warps=4)
        c = gg._gemm_kernel.fn[(triton.cdiv(n, bn), rows // bt)](
            a16, live, bp, bs, bg.reshape(e, groups).float().contiguous(), dec.reshape(1).float(),
            tile_experts(offsets, rows).clamp(max=offsets.numel() - 2), offsets, offsets.numel() - 1, out,
            n, k, groups, n // groups, BN=bn, BT=bt, SWAP=swap, DECODE_ASM=True, TILED=True, ONE_DOT=one,
            A_PACKED=apk, ap_ptr=ap, as_ptr=asc, a_col_tiles=cp // 4, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        info["c"] = c
        return out

    return run, info


def occupancy(c, warps: int) -> tuple[int, int, int]:
    regs, smem = c.n_regs, c.metadata.shared
    by_regs = REGS_PER_SM // max(1, ((regs + 7) // 8 * 8) * 32 * warps)
    by_smem = SMEM_PER_SM // max(1, smem + 1024)
    return regs, smem, min(by_regs, by_smem)


def grid(name: str) -> list[dict]:
    cfgs = []
    if name in ("full", "nonswap"):
        for bn, bt, w, s, one in itertools.product((128, 256), (64, 128), (4, 8), (2, 3, 4), (False, True)):
            if bn * bt // (32 * w) > 128:  # accumulator over 128 fp32 registers a thread: spills
                continue
            cfgs.append(dict(BN=bn, BT=bt, SWAP=False, W=w, S=s, ONE=one))
    if name in ("full", "swap"):
        for bn, w, s in itertools.product((64, 128, 256), (4, 8), (2, 3, 4)):
            if bn * 64 // (32 * w) > 128:
                continue
            cfgs.append(dict(BN=bn, BT=64, SWAP=True, W=w, S=s, ONE=False))
    if name in ("full", "apacked"):
        for bn, bt, w, s in itertools.product((128, 256), (64, 128), (4, 8), (2, 3, 4)):
            if bn * bt // (32 * w) > 128:
                continue
            cfgs.append(dict(BN=bn, BT=bt, SWAP=False, W=w, S=s, ONE=True, AP=True))
    if name.startswith("pick:"):
        for item in name[5:].split(";"):
            bn, bt, swap, w, s, one, apk = (int(v) for v in item.split(","))
            cfgs.append(dict(BN=bn, BT=bt, SWAP=bool(swap), W=w, S=s, ONE=bool(one), AP=bool(apk)))
    return cfgs


def main() -> None:
    op = sys.argv[1] if len(sys.argv) > 1 else "l1"
    routing = sys.argv[2] if len(sys.argv) > 2 else "uniform"
    which = sys.argv[3] if len(sys.argv) > 3 else "full"
    flops = matmul_flops(20)
    inputs, rows, useful, counts = _gemm_case(op, PRO[op], 4096, 6, routing, 0, 2, nvfp4_quantize)
    tiled = _tiled_inputs(inputs)
    del inputs
    if os.environ.get("PROBE_ONCE"):  # under a profiler: each config's kernel launched once, nothing else
        for cfg in grid(which):
            launcher(cfg)[0](*tiled[0])
        torch.cuda.synchronize()
        return
    ref = gg.grouped_gemm(*tiled[0], tiled=True)
    print(f"{op} {routing} rows {rows} bf16 matmul {flops / 1e12:.0f} TF/s; autotuned: {gg.tuned_config()}", flush=True)
    t = time_op(lambda *a: gg.grouped_gemm(*a, tiled=True), tiled, 20)
    frac = useful / t.median_us / 1e6 / flops * 1e12
    print(f"  autotuned kernel: {t.median_us / 1e3:.3f} ms ({frac:.1%})", flush=True)
    results = []
    for cfg in grid(which):
        run, info = launcher(cfg)
        t0 = time.time()
        try:
            out = run(*tiled[0])
            torch.cuda.synchronize()
        except Exception as exc:  # a config that does not compile or launch: report it and go on
            print(f"  {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)
            continue
        comp = time.time() - t0
        cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()
        t = time_op(run, tiled, 20)
        regs, smem, occ = occupancy(info["c"], cfg["W"])
        frac = useful / t.median_us / 1e6 / flops * 1e12
        results.append((t.median_us, cfg))
        print(
            f"  BN{cfg['BN']} BT{cfg['BT']} {'swap' if cfg['SWAP'] else 'mn'} W{cfg['W']} S{cfg['S']} "
            f"{'one' if cfg['ONE'] else 'two'}{' apacked' if cfg.get('AP') else ''}: "
            f"{t.median_us / 1e3:.3f} ms ({frac:.1%}) p10 {t.p10_us / 1e3:.3f} "
            f"p90 {t.p90_us / 1e3:.3f} cos {cos:.6f} regs {regs} smem {smem // 1024}K occ {occ} compile {comp:.1f}s",
            flush=True,
        )
    results.sort(key=lambda r: r[0])
    print("best:", "; ".join(f"{r[0] / 1e3:.3f} {r[1]}" for r in results[:5]))


if __name__ == "__main__":
    main()
