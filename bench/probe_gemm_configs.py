"""Probe: the Triton grouped GEMM's kernels at explicit tiles (not only the autotuner's pick), at the Pro
MoE shapes, with the registers, shared memory and resident CTAs per SM of each compiled kernel.

Usage (GPU machine, repository root): python3 bench/probe_gemm_configs.py [l1|l2] [uniform|skewed] [grid]
grid: the tl.dot kernel at "full" (every tile whose accumulator fits) or "pick:BN,BT,warps,stages;...";
the SM90 wgmma kernel (grouped_gemm_sm90) at "wgmma": its CONFIGS over the whole tile plan, then each
token tile size's launch alone at its config and at others, or "wgmma:BT=BM,stages[,parts];..." (those
sizes alone, with `parts` consumer warpgroups, default 2; "all" for the whole plan); a size's launch alone
also prints its CTA-microseconds a tile scaled to K = 7168 (TILE_COST's unit); PROBE_CTAS=n runs n
persistent CTAs; PROBE_PREP="span,warps[,rows];..." times A's copy for the wgmma kernel (gemm_args) with
programs of `_prep_a_kernel` at those K spans, warps and rows (default 64), each twice, and goes on with the
last; PROBE_HOT_COST="c1,c2,..." times the whole plan with TILE_COST[128] = c (the SM split), and each side
alone on its share of the SMs. Prints one line per config: median ms of 20 runs (L2 flushed, inputs
rotated), share of the bf16 matmul rate in useful flops (of the whole GEMM, also for one size's launch
alone), cos against the autotuned tl.dot kernel's output (for the whole plan only). PROBE_ONCE=1 launches
each config once and times nothing (for Nsight Compute: ncu -k regex:_gemm ... python3
bench/probe_gemm_configs.py ...).
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
from fp4check.kernels.triton import grouped_gemm as gg
from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

SMEM_PER_SM = 228 * 1024
REGS_PER_SM = 65536


def probe_ctas() -> int:
    """PROBE_CTAS, 0 where unset (one CTA per SM): fewer CTAs than SMs give per-SM speed apart from DRAM."""
    return int(os.environ.get("PROBE_CTAS", 0))


def launcher(cfg: dict):
    if "BM" in cfg:
        return wgmma_launcher(cfg)
    bn, bt, warps, stages = cfg["BN"], cfg["BT"], cfg["W"], cfg["S"]
    info = {}

    def run(*inputs):
        args, out = gg.gemm_args(*inputs, tiled=True)
        rows, n = out.shape
        c = gg._gemm_kernel.fn[(triton.cdiv(n, bn), rows // bt)](
            *args, BN=bn, BT=bt, DECODE_ASM=True, TILED=True, num_warps=warps, num_stages=stages
        )
        info["c"] = c
        return out

    return run, info


def wgmma_launcher(cfg: dict):
    from fp4check.kernels.triton import grouped_gemm_sm90 as sm90

    info = {}

    configs, sizes = dict(sm90.CONFIGS), sm90.TOKEN_TILES
    ctas = probe_ctas() or None
    if cfg["BT"] != "all":
        configs[cfg["BT"]], sizes = (cfg["BM"], cfg["S"], cfg["P"]), (cfg["BT"],)

    def run(*inputs):
        args, out = gg.gemm_args(*inputs, tiled=True, wgmma=True)
        info["c"] = sm90.launch(args, configs, ctas, sizes=sizes)[-1]
        return out

    return run, info


def hot_cost_line(cost: int, tiled: list, args: tuple, useful: float, flops: float) -> None:
    """The whole plan with TILE_COST[128] = cost, then the 16- to 64-row launches alone on their share of
    the SMs and the 128-row launch alone on its share: where the two sides' times differ, the split is off."""
    from fp4check.kernels.triton import grouped_gemm_sm90 as sm90

    before = sm90.TILE_COST[128]
    sm90.TILE_COST[128] = cost
    split = sm90.build_plan(args[1], args[7], args[6], sm90._sms(torch.cuda.current_device()))[3].tolist()
    t = time_op(lambda *a: gg.grouped_gemm(*a, tiled=True, kernel="wgmma"), tiled, 20)
    frac = useful / t.median_us / 1e6 / flops * 1e12
    line = f"  hot cost {cost}, split {split}: {t.median_us / 1e3:.3f} ms ({frac:.1%})"
    for name, sizes, ctas in (("16-64", (16, 32, 64), split[0]), ("128", (128,), split[1])):

        def run(*a, sizes=sizes, ctas=ctas):
            kargs, out = gg.gemm_args(*a, tiled=True, wgmma=True)
            sm90.launch(kargs, None, ctas, sizes=sizes)
            return out

        line += f"; {name} alone on {ctas}: {time_op(run, tiled, 20).median_us / 1e3:.3f} ms"
    print(line, flush=True)
    sm90.TILE_COST[128] = before


def occupancy(c, warps: int) -> tuple[int, int, int]:
    regs, smem = c.n_regs, c.metadata.shared
    by_regs = REGS_PER_SM // max(1, ((regs + 7) // 8 * 8) * 32 * warps)
    by_smem = SMEM_PER_SM // max(1, smem + 1024)
    return regs, smem, min(by_regs, by_smem)


def grid(name: str) -> list[dict]:
    """ "full": every tile whose fp32 accumulator fits in 128 registers a thread; "pick:BN,BT,W,S;...": those."""
    if name.startswith("wgmma"):
        from fp4check.kernels.triton.grouped_gemm_sm90 import CONFIGS, NARROW

        if name == "wgmma":
            others = {16: [(256, 6, 2)], 32: [(256, 7, 2)], 64: [(256, 5, 2)], 128: [(256, 2, 2)]}
            picks = [("all", 256, 0, 0)] + [(bt, *CONFIGS[bt]) for bt in CONFIGS]
            picks += [(bt, *c) for bt in CONFIGS for c in [NARROW[bt], *others[bt]]]
        else:
            picks = []
            for item in name[6:].split(";"):
                if item == "all":
                    picks.append(("all", 256, 0, 0))
                    continue
                bt, cfg = item.split("=")
                bm, st, *parts = (int(v) for v in cfg.split(","))
                picks.append((int(bt), bm, st, parts[0] if parts else 2))
        # parts x 4 MMA warps and the TMA warp's 4 (a 1-warp partition takes a whole warpgroup)
        return [dict(BM=bm, BT=bt, S=st, P=p, W=4 * p + 4 if p else 12) for bt, bm, st, p in picks]
    if name == "full":
        return [
            dict(BN=bn, BT=bt, W=w, S=s)
            for bn, bt, w, s in itertools.product((128, 256), (64, 128), (4, 8), (2, 3, 4))
            if bn * bt // (32 * w) <= 128
        ]
    cfgs = []
    for item in name.removeprefix("pick:").split(";"):
        bn, bt, w, s = (int(v) for v in item.split(","))
        cfgs.append(dict(BN=bn, BT=bt, W=w, S=s))
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
    ref = gg.grouped_gemm(*tiled[0], tiled=True, kernel="tl.dot")
    print(f"{op} {routing} rows {rows} bf16 matmul {flops / 1e12:.0f} TF/s", flush=True)
    if which.startswith("wgmma"):
        from fp4check.kernels.triton.grouped_gemm_sm90 import _sms, build_plan
        from fp4check.kernels.triton.tile_plan import TOKEN_TILES

        args, _ = gg.gemm_args(*tiled[0], tiled=True, wgmma=True)
        blocks = build_plan(args[1], args[7], args[6])[2].tolist()
        print("  plan: blocks per token tile size", dict(zip(TOKEN_TILES, blocks, strict=True)), flush=True)
        for prep in [v for v in os.environ.get("PROBE_PREP", "").split(";") if v] * 2:
            span, warps, *rows = (int(v) for v in prep.split(","))
            gg.PREP["wgmma"] = (span, warps, rows[0] if rows else 64)
            t = time_op(lambda *a: gg.gemm_args(*a, tiled=True, wgmma=True)[1], tiled, 20)
            print(
                f"  A's copy at K span {span}, {warps} warps, {gg.PREP['wgmma'][2]} rows a program: "
                f"{t.median_us:.1f} us",
                flush=True,
            )
        t = time_op(lambda *a: gg.gemm_args(*a, tiled=True, wgmma=True)[1], tiled, 20)
        print(f"  A's f16 copy, live flags (gemm_args) alone: {t.median_us / 1e3:.3f} ms", flush=True)
        for cost in [int(v) for v in os.environ.get("PROBE_HOT_COST", "").split(",") if v]:
            hot_cost_line(cost, tiled, args, useful, flops)
    for kernel in ("tl.dot", "auto"):
        t = time_op(lambda *a, kernel=kernel: gg.grouped_gemm(*a, tiled=True, kernel=kernel), tiled, 20)
        frac = useful / t.median_us / 1e6 / flops * 1e12
        print(f"  autotuned {kernel}: {t.median_us / 1e3:.3f} ms ({frac:.1%}) {gg.tuned_config()}", flush=True)
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
        if "BM" in cfg and cfg["BT"] != "all":
            cos = float("nan")  # one size's launch writes only its blocks
        t = time_op(run, tiled, 20)
        regs, smem, occ = occupancy(info["c"], cfg["W"])
        frac = useful / t.median_us / 1e6 / flops * 1e12
        results.append((t.median_us, cfg))
        name = f"BM{cfg['BM']}" if "BM" in cfg else f"BN{cfg['BN']}"
        if "BM" in cfg and cfg["BT"] != "all":  # CTA-us a tile at K = 7168: TILE_COST's unit
            tiles = blocks[TOKEN_TILES.index(cfg["BT"])] * (args[10] // cfg["BM"])
            ctas = min(probe_ctas() or _sms(torch.cuda.current_device()), tiles)  # as launch sizes its grid
            name += f" P{cfg['P']} ({t.median_us * ctas / max(tiles, 1) * 7168 / args[11]:.1f} CTA-us a tile)"
        print(
            f"  {name} BT{cfg['BT']} W{cfg['W']} S{cfg['S']}: "
            f"{t.median_us / 1e3:.3f} ms ({frac:.1%}) p10 {t.p10_us / 1e3:.3f} "
            f"p90 {t.p90_us / 1e3:.3f} cos {cos:.6f} regs {regs} smem {smem // 1024}K occ {occ} compile {comp:.1f}s",
            flush=True,
        )
    results.sort(key=lambda r: r[0])
    print("best:", "; ".join(f"{r[0] / 1e3:.3f} {r[1]}" for r in results[:5]))


if __name__ == "__main__":
    main()
