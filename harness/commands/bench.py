"""`fp4check bench OP`: GPU kernel timings with their ratio to limits measured in the same run."""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path

import click

from fp4check.options import json_option, seed_option

# Pro MoE shapes: 384 experts, hidden 7168, intermediate 3072 (L1 = w1|w3 -> 6144), top-6, 4096 tokens
PRO = {"l1": (384, 6144, 7168), "l2": (384, 7168, 3072)}
OPS = ("quant", "l1", "l2", "act", "kv")


def _counts(tokens: int, topk: int, experts: int, routing: str, gen) -> list[int]:
    import torch

    if routing == "uniform":
        base = [tokens * topk // experts] * experts
        for i in range(tokens * topk - sum(base)):
            base[i] += 1
        return base
    # skewed: expert popularity ~ 1/rank^1.2, each token's top-k distinct
    p = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64) ** 1.2
    ids = torch.multinomial(p.expand(tokens, -1), topk, replacement=False, generator=gen)
    return torch.bincount(ids.flatten(), minlength=experts).tolist()


KERNELS = ("triton", "cutedsl")


def _kernels(backend: str):
    """(quantize, grouped_gemm) of a GPU backend, both on GPU tensors with the same signatures."""
    if backend == "triton":
        from fp4check.kernels.triton.grouped_gemm import grouped_gemm
        from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize

        return nvfp4_quantize, grouped_gemm
    from fp4check.kernels.cutedsl import grouped_gemm, nvfp4_quantize

    return nvfp4_quantize, grouped_gemm


SUSTAIN_S = 1.5  # --warm: the H100 settles at its power limit ~1 s into a load (gpu_bench's Clock)
# every column any op writes, in one order, so that rows of different ops appended to one file line up
CSV_FIELDS = (
    "op", "variant", "shape", "median_us", "p10_us", "p90_us", "runs", "GBps", "of_copy_bw", "TFLOPs",
    "of_matmul", "copy_GBps", "matmul_TFLOPs", "warm_s", "compile_s", "config", "gpu", "versions", "command",
)  # fmt: skip


def _append_csv(path: Path, rows: list[dict]) -> None:
    from fp4check.errors import InputError

    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_FIELDS:
            raise InputError(f"{path} has other columns (another fp4check version wrote it): pass a new --csv file")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if f.tell() == 0:
            w.writeheader()
        w.writerows(rows)


def _tuned(backend: str | None) -> str:
    """The triton GEMM's autotuned tile, for the CSV (other variants have none)."""
    if backend != "triton":
        return ""
    from fp4check.kernels.triton.grouped_gemm import tuned_config

    return tuned_config()


def _compile_s(backend: str) -> float | None:
    """Seconds the backend's kernels took to compile in this process (cutedsl; Triton's JIT is not split out)."""
    if backend != "cutedsl":
        return None
    from fp4check.kernels.cutedsl.runtime import compile_times

    return sum(compile_times.values())


def _gemm_case(op: str, shape, tokens: int, topk: int, routing: str, seed: int, sets: int, nvfp4_quantize):
    import torch

    experts, n, k = shape
    gen = torch.Generator().manual_seed(seed)
    counts = _counts(tokens, topk, experts, routing, gen)
    padded = [-(-c // 128) * 128 for c in counts]
    offsets = torch.tensor([0, *padded], dtype=torch.int64).cumsum(0).cuda()
    rows = int(offsets[-1])
    g = torch.Generator(device="cuda").manual_seed(seed)
    b_packed = torch.randint(0, 256, (experts, n, k // 2), dtype=torch.uint8, device="cuda", generator=g)
    b_scales = torch.randint(0x30, 0x40, (experts, n, k // 16), dtype=torch.uint8, device="cuda", generator=g)
    groups = 2 if op == "l1" else 1
    b_global = torch.rand(experts, groups, device="cuda", generator=g) * 1e-3 + 1e-4
    # padding rows are zero, as the MoE forward's gather leaves them (emulated moe.gather_rows): the GEMM
    # skips their 64-row tiles
    live = torch.zeros(rows, 1, dtype=torch.bool, device="cuda")
    for start, c in zip(offsets[:-1].tolist(), counts, strict=True):
        live[start : start + c] = True
    inputs = []
    for _ in range(sets):
        x = (torch.randn(rows, k, device="cuda", generator=g) * live).to(torch.bfloat16)
        enc = torch.tensor([2688.0 / 6.0], device="cuda")
        ap, asc = nvfp4_quantize(x, enc)
        inputs.append((ap, asc, 1.0 / enc, b_packed, b_scales, b_global, offsets))
    useful = 2.0 * tokens * topk * n * k
    return inputs, rows, useful, counts


def _tiled_inputs(inputs: list[tuple]) -> list[tuple]:
    """The GEMM inputs with one reordered copy of the weights (what the triton backend's prepare_weights
    makes once per weight), shared by every input set as the weights are."""
    from fp4check.kernels.triton.weight_tiles import tile_

    packed, scales = inputs[0][3].clone(), inputs[0][4].clone()
    tile_(packed, scales)
    return [(*i[:3], packed, scales, *i[5:]) for i in inputs]


def _dequant_weights(b_packed, b_scales, b_global):
    """The alternative a user would pick first: every expert's weight to bf16 with torch ops (an expert
    at a time: the float32 intermediates of all 384 at once would not fit)."""
    import torch

    lut = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], device=b_packed.device)
    e, n, half = b_packed.shape
    k = half * 2
    groups = b_global.shape[-1]
    out = torch.empty(e, n, k, dtype=torch.bfloat16, device=b_packed.device)
    for i in range(e):
        codes = torch.stack([b_packed[i] & 15, b_packed[i] >> 4], -1).flatten(-2).long()
        vals = lut[codes].view(n, k // 16, 16) * b_scales[i].view(torch.float8_e4m3fn).float().unsqueeze(-1)
        out[i] = (vals.view(groups, n // groups, k) * b_global[i].view(groups, 1, 1)).view(n, k)
    return out


def _dequant_act(ap, asc, dec, rows: int, k: int):
    import torch

    from fp4check.references.swizzle import unswizzle_128x4

    lut = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], device=ap.device)
    codes = torch.stack([ap & 15, ap >> 4], -1).flatten(-2).long()
    s = unswizzle_128x4(asc.view(torch.float8_e4m3fn), rows, k // 16).float()
    return (lut[codes].view(rows, k // 16, 16) * s.unsqueeze(-1) * dec).view(rows, k).to(torch.bfloat16)


def _torch_grouped(a_bf16, w_bf16, offsets):
    import torch

    ends = offsets[1:].to(torch.int32)
    if hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm(a_bf16, w_bf16.transpose(1, 2), offs=ends)
    out = torch.empty(a_bf16.shape[0], w_bf16.shape[1], dtype=torch.bfloat16, device=a_bf16.device)
    for e in range(w_bf16.shape[0]):  # pragma: no cover - older torch
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        out[lo:hi] = a_bf16[lo:hi] @ w_bf16[e].t()
    return out


def _bandwidth_rows(op: str, shape: str | None, seed: int, runs: int, bw: float, common: dict) -> list[dict]:
    """The fused SwiGLU + L2 requantization (act: P x 2I) and the FP8 KV write (kv: N tokens), against the
    unfused or torch path a user would otherwise run, as bandwidth."""
    import torch

    from fp4check.gpu_bench import time_op

    g = torch.Generator(device="cuda").manual_seed(seed)
    enc = torch.tensor([50.0], device="cuda")
    if op == "act":
        from fp4check.kernels.emulated.moe import swiglu_clamp
        from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize
        from fp4check.kernels.triton.swiglu_quant import swiglu_quantize

        p, two_i = (int(v) for v in (shape or "24576x6144").lower().split("x"))
        ins = [(torch.randn(p, two_i, device="cuda", generator=g).to(torch.bfloat16) * 3,) for _ in range(3)]
        moved = p * two_i * 2 + p * two_i // 2 * 2 + p * two_i // 4 + p * two_i // 32
        shape_s = f"{p}x{two_i}"
        variants = [
            ("triton fused swiglu + nvfp4", lambda x: swiglu_quantize(x, 10.0, enc), False),
            ("triton fused swiglu + nvfp4 graph", lambda x: swiglu_quantize(x, 10.0, enc), True),
            (
                "torch swiglu, then triton nvfp4 (alternative)",
                lambda x: nvfp4_quantize(swiglu_clamp(x, 10.0), enc),
                False,
            ),
        ]
    else:
        from fp4check.kernels.emulated.kv_cache import kv_cache_write as torch_write
        from fp4check.kernels.triton.kv_write import kv_cache_write
        from fp4check.references.kv_layout import TOKEN_BYTES, page_bytes

        n = int(shape or 65536)
        block = 64
        pages = torch.full((n // block, page_bytes(block)), 0xFF, dtype=torch.uint8, device="cuda")
        slots = torch.randperm(n, device="cuda", generator=g)
        ins = [(torch.randn(n, 512, device="cuda", generator=g).to(torch.bfloat16),) for _ in range(3)]
        moved = n * (512 * 2 + TOKEN_BYTES)
        shape_s = f"{n} tokens, block {block}"
        variants = [
            ("triton fp8 kv write", lambda kv: kv_cache_write(pages, block, slots, kv), False),
            ("triton fp8 kv write graph", lambda kv: kv_cache_write(pages, block, slots, kv), True),
            ("torch codec + index write (alternative)", lambda kv: torch_write(pages, block, slots, kv), False),
        ]
    return [
        _bandwidth_row(common, label, shape_s, time_op(fn, ins, runs, graph=graph, warm_s=common["warm_s"]), moved, bw)
        for label, fn, graph in variants
    ]


def _bandwidth_row(common: dict, variant: str, shape: str, t, moved: int, bw: float) -> dict:
    """A CSV row of a bandwidth-bound op: its rate and its ratio to the copy bandwidth of the same run."""
    gbps = moved / (t.median_us * 1e-6) / 1e9
    return {**common, "variant": variant, "shape": shape, **t.as_dict(), "GBps": gbps, "of_copy_bw": gbps * 1e9 / bw}


@click.command()
@click.argument("op", type=click.Choice(OPS))
@click.option(
    "--shape",
    default=None,
    help="quant: MxK (default 8192x7168); l1/l2: E,N,K (default the Pro MoE); act: Px2I (default 24576x6144); "
    "kv: tokens (default 65536).",
)
@click.option("--tokens", type=int, default=4096, show_default=True, help="Tokens (l1/l2).")
@click.option("--topk", type=int, default=6, show_default=True, help="Experts per token (l1/l2).")
@click.option("--routing", type=click.Choice(["uniform", "skewed"]), default="uniform", show_default=True)
@click.option(
    "--backend",
    default="triton",
    show_default=True,
    help="Backend whose kernels are timed: triton, or cutedsl (timed next to triton where it can run).",
)
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs (at least 50).")
@click.option(
    "--warm",
    type=float,
    default=SUSTAIN_S,
    show_default=True,
    help="Seconds each figure's own work runs untimed before its timed runs, limits included: under load the "
    "board's power limit sets the clock, so every figure is then its steady state; 0 times from wherever the "
    "clock is.",
)
@seed_option
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Append the rows to this CSV.")
@json_option
def bench(op, shape, tokens, topk, routing, backend, runs, warm, seed, csv_path, as_json) -> None:
    """Time a kernel with CUDA events (warm-up, L2 flushed and inputs rotated between runs, median and
    10th/90th percentiles), eager and CUDA-graph, next to a device-to-device copy (bandwidth), a bf16
    matmul (compute) and the dequantize-then-torch alternative, all measured in this run, each at its
    steady clock under the board's power limit (--warm)."""
    import torch

    from fp4check.environment import gpus, versions
    from fp4check.errors import InputError
    from fp4check.gpu_bench import copy_bandwidth, matmul_flops, time_op
    from fp4check.kernels.registry import load_backend
    from fp4check.reports.terminal import stdout_console

    if runs < 50:
        raise InputError("--runs must be at least 50")
    if warm < 0:
        raise InputError(f"--warm must be 0 or more seconds, not {warm:g}")
    if backend not in KERNELS:
        raise InputError(f"fp4check bench times the kernels of {', '.join(KERNELS)}; {backend} has none to time")
    unmet = load_backend(backend).needs.unmet()
    if unmet:
        raise InputError(f"backend {backend} cannot run here: {unmet}")
    # the backend, then triton beside it (the alternative a cutedsl user compares with) where it runs
    timed = [backend] + [b for b in KERNELS if b != backend and b == "triton" and not load_backend(b).needs.unmet()]
    kernels = {b: _kernels(b) for b in timed}

    bw, flops = copy_bandwidth(runs, warm_s=warm), matmul_flops(runs, warm_s=warm)
    rows_out = []
    common = {
        "op": op,
        "gpu": gpus()[0]["name"] if gpus() else "",
        "versions": json.dumps(versions()),
        "command": " ".join(["fp4check", *sys.argv[1:]]),
        "copy_GBps": bw / 1e9,
        "matmul_TFLOPs": flops / 1e12,
        "warm_s": warm,
    }
    if op == "quant":
        m, k = (int(v) for v in (shape or "8192x7168").lower().split("x"))
        g = torch.Generator(device="cuda").manual_seed(seed)
        xs = [
            (torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16), torch.tensor([100.0], device="cuda"))
            for _ in range(3)
        ]
        moved = m * k * 2 + m * k // 2 + m * k // 16
        from fp4check.kernels.emulated.moe import quantize_activation
        from fp4check.references.nvfp4 import EncodeScale

        variants = [(f"{b} {mode}", kernels[b][0], mode == "graph", b) for b in timed for mode in ("eager", "graph")]
        alt = lambda x, e: quantize_activation(x, EncodeScale(e.reshape(())))  # noqa: E731
        variants.append(("torch codec (alternative)", alt, False, None))
        for label, fn, graph, owner in variants:
            t = time_op(fn, xs, runs, graph=graph, warm_s=warm)
            rows_out.append(_bandwidth_row(common, label, f"{m}x{k}", t, moved, bw) | {"compile_s": _compile_s(owner)})
    elif op in ("act", "kv"):
        if backend != "triton":
            raise InputError(f"bench {op} times a triton kernel; use --backend triton")
        rows_out += _bandwidth_rows(op, shape, seed, runs, bw, common)
    else:
        from fp4check.kernels.triton.weight_tiles import tileable

        e, n, k = PRO[op] if shape is None else tuple(int(v) for v in shape.split(","))
        inputs, rows, useful, counts = _gemm_case(op, (e, n, k), tokens, topk, routing, seed, 2, kernels[backend][0])
        shape_s = f"E{e} N{n} K{k} T{tokens} top{topk} {routing} rows{rows}"
        # the triton GEMM reads the weights as its backend's prepare_weights lays them out at load (a copy
        # here: the rows stay for the other variants)
        tiled = _tiled_inputs(inputs) if "triton" in timed and tileable(n, k) else None
        variants = []
        for b in timed:
            fn, ins = kernels[b][1], inputs
            if b == "triton" and tiled:
                fn, ins = functools.partial(fn, tiled=True), tiled
            variants += [(f"{b} {mode}", fn, mode == "graph", b, ins) for mode in ("eager", "graph")]
        if "triton" in timed:
            from fp4check.kernels.triton.grouped_gemm import wgmma_fits

            gemm = kernels["triton"][1]
            if tiled and wgmma_fits(n, k, torch.device("cuda")):  # the portable tl.dot kernel beside it
                dot = functools.partial(gemm, tiled=True, kernel="tl.dot")
                variants.append(("triton eager, tl.dot kernel", dot, False, "triton", tiled))
            variants.append(("triton eager, weights as stored (no prepare_weights)", gemm, False, "triton", inputs))
            # what the inline-PTX weight decode buys, the tl.dot kernel otherwise
            plain = functools.partial(gemm, decode_asm=False, tiled=bool(tiled))
            variants.append(
                ("triton eager, tl.dot kernel, plain-op weight decode", plain, False, "triton", tiled or inputs)
            )
        try:
            w16 = _dequant_weights(*inputs[0][3:6])
            acts = [(_dequant_act(ap, asc, dec, rows, k), w16, off) for ap, asc, dec, _, _, _, off in inputs]

            def alt_full(ap, asc, dec, bp, bs, bg, off):
                return _torch_grouped(_dequant_act(ap, asc, dec, rows, k), _dequant_weights(bp, bs, bg), off)

            variants.append(("dequantize + torch grouped_mm (alternative)", alt_full, False, None, inputs))
            t_w16 = time_op(_torch_grouped, acts, runs, warm_s=warm)
            del acts, w16  # 4x the packed weights: free them before the per-call dequantization
        except torch.OutOfMemoryError:
            t_w16 = None
        for label, fn, graph, owner, ins in variants:
            t = time_op(fn, ins, runs, graph=graph, warm_s=warm)
            tf = useful / (t.median_us * 1e-6)
            rows_out.append(
                {
                    **common,
                    "variant": label,
                    "shape": shape_s,
                    **t.as_dict(),
                    "TFLOPs": tf / 1e12,
                    "of_matmul": tf / flops,
                    "compile_s": _compile_s(owner),
                    "config": _tuned(owner),
                }
            )
        if t_w16 is not None:
            tf = useful / (t_w16.median_us * 1e-6)
            rows_out.append(
                {
                    **common,
                    "variant": "torch grouped_mm on pre-dequantized bf16 weights (W16, 4x memory)",
                    "shape": shape_s,
                    **t_w16.as_dict(),
                    "TFLOPs": tf / 1e12,
                    "of_matmul": tf / flops,
                }
            )
    if csv_path:
        _append_csv(csv_path, rows_out)
    if as_json:
        click.echo(json.dumps(rows_out, default=str))
        return
    from rich.table import Table

    con = stdout_console()
    t = Table(
        title=f"bench {op} on {common['gpu']}: copy {bw / 1e9:.0f} GB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s"
        f" (every figure after {warm:g} s of its own work)"
    )
    for col in ("variant", "shape", "median us", "p10-p90 us", "rate", "of limit", "compile s"):
        t.add_column(col)
    for r in rows_out:
        rate = f"{r['GBps']:.0f} GB/s" if "GBps" in r else f"{r['TFLOPs']:.1f} TFLOP/s"
        frac = r.get("of_copy_bw", r.get("of_matmul"))
        t.add_row(
            r["variant"],
            r["shape"],
            f"{r['median_us']:.1f}",
            f"{r['p10_us']:.1f}-{r['p90_us']:.1f}",
            rate,
            f"{frac:.0%}",
            "" if r.get("compile_s") is None else f"{r['compile_s']:.2f}",
        )
    con.print(t)
