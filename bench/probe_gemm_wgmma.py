"""Where the Gluon wgmma main loop's time goes (experiment, see bench/results/h100_gemm_wgmma_probe_20261122.txt): per config, the full kernel, loads + stores only (D0M0), and the same with a contiguous weight stream (contig; wrong results, timing only). Run from the repository root on an SM90 GPU."""
import importlib.util, sys, torch, triton
from fp4check.commands.bench import _gemm_case, PRO
from fp4check.kernels.triton.nvfp4_quant import nvfp4_quantize
from fp4check.kernels.triton import grouped_gemm as gg
from fp4check.kernels.gpu_backend import tile_experts

src = open("kernels/triton/grouped_gemm_wgmma.py").read()
src = src.replace("@triton.autotune(", "def _unused(", 1).replace('    key=["N", "K"],\n    prune_configs_by={"early_config_prune": _tiles_dividing_n},\n)\n', "):\n    pass\n", 1)
src = src.replace("BN: gl.constexpr, SUB: gl.constexpr, STAGES: gl.constexpr):", "BN: gl.constexpr, SUB: gl.constexpr, STAGES: gl.constexpr, DEC: gl.constexpr, MMAON: gl.constexpr):")
asm = """            w_lo, w_hi = gl.inline_asm_elementwise(
                _DECODE_PTX, "=r,=r,=r,=r,r,r,r", [p, s], dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4
            )"""
assert asm in src
src = src.replace(asm, """            if DEC:
    """ + asm.replace(chr(10), chr(10) + "    ") + """
            else:
                w_lo = (p + s.to(gl.uint8)).to(gl.bfloat16)
                w_hi = w_lo""")
mm = """        for j in gl.static_range(2 * SUB):
            a_op = a_smem.index(2 * slot * SUB + j)
            acc = warpgroup_mma(a_op, d_smem.index(j).permute((1, 0)), acc, is_async=True)"""
assert mm in src
src = src.replace(mm, """        if MMAON:
    """ + mm.replace(chr(10), chr(10) + "    ") + """
        else:
            acc = warpgroup_mma_init(acc)""")
def load(name, text):
    open(f"/tmp/{name}.py", "w").write(text)
    spec = importlib.util.spec_from_file_location(name, f"/tmp/{name}.py"); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m
pm = load("probe_mod", src)
pw = "        pw = b_ptr + (e.to(gl.int64) * N + nw[:, None]) * (K // 2) + k0 // 2 + kw[None, :]"
assert pw in src
pmc = load("probe_contig", src.replace(pw, "        pw = b_ptr + e.to(gl.int64) * N * (K // 2) + (k0 // KC) * (N * 64) + nw[:, None] * 64 + kw[None, :]"))

for op, routing in [("l1", "uniform"), ("l2", "uniform")]:
    e, n, k = PRO[op]
    inputs, rows, useful, counts = _gemm_case(op, (e, n, k), 4096, 6, routing, 0, 1, nvfp4_quantize)
    ap, asc, dec, bp, bs, bg, off = inputs[0]
    ref = gg.grouped_gemm(*inputs[0], mainloop="dot")
    ms_dot = triton.testing.do_bench(lambda: gg.grouped_gemm(*inputs[0], mainloop="dot"))
    print(op, routing, "dot full", round(ms_dot, 3), "ms", gg.tuned_config(), flush=True)
    # the A prep alone
    a16 = torch.empty(rows, k, dtype=torch.bfloat16, device="cuda"); live = torch.zeros(rows // 64, dtype=torch.int32, device="cuda")
    cp = -(-(k // 16) // 4) * 4
    ms_prep = triton.testing.do_bench(lambda: gg._prep_a_kernel[(rows // 64, k // 128)](ap, asc, a16, live, k, cp // 4, num_warps=4))
    print("  prep_a", round(ms_prep, 3), "ms", flush=True)
    tiles = tile_experts(off, rows).clamp(max=off.numel() - 2)
    groups = bg.shape[-1]
    out = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
    bgl = bg.reshape(e, groups).float().contiguous(); agl = dec.reshape(1).float()
    for BN, SUB, S, W in [(128, 1, 3, 4), (128, 2, 2, 4), (128, 2, 2, 8), (64, 2, 3, 4), (64, 1, 4, 4)]:
        res = []
        for mod, DEC, MM in [(pm, 1, 1), (pm, 0, 0), (pmc, 1, 1), (pmc, 0, 0)]:
            f = lambda: mod._gemm_wgmma_kernel[(n // BN, rows // 64)](a16, live, bp, bs, bgl, agl, tiles, off, e, out, n, k, k // 16, groups, n // groups, BN=BN, SUB=SUB, STAGES=S, DEC=bool(DEC), MMAON=bool(MM), num_warps=W)
            tag = ("contig " if mod is pmc else "") + ("full" if DEC else "D0M0")
            try:
                ms = triton.testing.do_bench(f)
            except Exception as ex:
                res.append(f"{tag} ERR {str(ex)[:80]}"); continue
            if DEC and MM and mod is pm:
                cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()
                res.append(f"{tag} {ms:.3f} (cos {cos:.6f}, {useful / ms / 1e9:.0f} TF)")
            else:
                res.append(f"{tag} {ms:.3f}")
        print(f"  BN{BN} SUB{SUB} S{S} W{W}: " + "; ".join(res), flush=True)
    del inputs, ref, out, a16
    torch.cuda.empty_cache()
