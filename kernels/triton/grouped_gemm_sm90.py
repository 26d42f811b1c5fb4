"""The grouped NVFP4 GEMM's SM90 kernel, in Gluon (Triton's explicit-layout dialect): the decoded weights
go to wgmma from registers, so no decoded tile passes through shared memory.

Orientation ("swap AB"): the weights are the MMA's M side (BM rows a CTA, 64 or 128 per warpgroup), the
tokens its N side (BT = 64 or 128 rows of one expert, from a cp.async ring in shared memory). Per K step
of 128:
- each thread loads its own 16 contiguous bytes of packed e2m1 per weight row straight from global
  memory, two steps ahead, and the row's two e4m3 scales. With `weight_tiles`' layout (64-row groups,
  one 64-byte row piece per K step) a warp reads 1 KB at once, and those 16 bytes are exactly the codes
  the thread's wgmma register fragment needs, once A's K order is permuted to match (below);
- the bytes decode in registers with the `tl.dot` kernel's inline PTX (bf16, x 2^-8, given back in the
  epilogue) while the previous step's wgmma is still running; the decoded tile's layout is the wgmma
  A-fragment layout itself (`convert_layout(..., assert_trivial=True)` proves it at compile time);
- two wgmmas (K = 64 each) run asynchronously, waited for one step later.

K order. Thread t (lane % 4) of a fragment holds columns j = 16b + 8h + 2t + p (b = 0..7 k16 blocks,
h, p = 0, 1) of the step. They are fed from byte 16t + 2b + h of the row piece, nibble p, i.e. from
k = 32t + 4b + 2h + p. The GEMM sums over K in any order, so `_prep_a_kernel` stores A's bf16 copy in
that order (`A_ORDER`), and every product is the one the `tl.dot` kernel and the emulated backend make:
only the fp32 accumulation order differs.

Token tiles with no live row (the zero padding of an expert, `live` flags from the A pass) and tiles
past offsets[-1] skip the K loop and write zeros, as in the `tl.dot` kernel; nothing syncs with the
host, so the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from fp4check.kernels.triton.grouped_gemm import EPILOGUE_GAIN, TWO_POW_118
from fp4check.kernels.triton.weight_tiles import K_STEP, ROWS

KC = gl.constexpr(K_STEP)
GROUP = gl.constexpr(ROWS)
A_ORDER = "wgmma"  # _prep_a_kernel's name for the K order above

# One word of 8 packed codes ($8; bytes b0..b3) and its block scale ($9, bf16 s_b x 2^118) -> 8 bf16
# (x 2^-8, as the tl.dot kernel's _DECODE_PTX): ($0, $1) = low nibbles of (b0, b1), ($2, $3) of (b2, b3),
# then the high nibbles. Each pair is one wgmma fragment register (columns 2t, 2t + 1).
_DECODE_WORD_PTX = gl.constexpr("""{
.reg .b32 u, v, m, s, sc;
mov.b32 sc, {$9, $9};
prmt.b32 u, $8, 0, 0x4140;
prmt.b32 v, $8, 0, 0x4342;
shl.b32 m, u, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, u, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, sc; mov.b32 {$0, $1}, m;
shl.b32 m, v, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, v, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, sc; mov.b32 {$2, $3}, m;
shl.b32 m, u, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, u, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, sc; mov.b32 {$4, $5}, m;
shl.b32 m, v, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, v, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, sc; mov.b32 {$6, $7}, m;
}""")


@gluon.constexpr_function
def _log2(x: int) -> int:
    return x.bit_length() - 1


@gluon.constexpr_function
def _words_layout(nw: int, rm: int, per_row: int) -> gl.DistributedLinearLayout:
    """[BM, per_row] words of a K step: 16 packed bytes a thread (per_row = 16 int32 words: one 16-byte
    load) or its 2 block scales (per_row = 8 bytes), then the fragment's second row (+8), then the
    register repeats; lanes: 4 threads across the row, 8 rows; warps: 16 rows each."""
    own = per_row // 4
    regs = [[0, 1 << i] for i in range(_log2(own))] + [[8, 0]] + [[16 * nw << i, 0] for i in range(_log2(rm))]
    lanes = [[0, own], [0, 2 * own], [1, 0], [2, 0], [4, 0]]
    warps = [[16 << i, 0] for i in range(_log2(nw))]
    return gl.DistributedLinearLayout(regs, lanes, warps, [], [16 * nw * rm, per_row])


@gluon.jit
def _issue_tokens(a16_ptr, a_smem, slot, step, nk, t0, K, BT: gl.constexpr, LA: gl.constexpr):
    """cp.async of A's step `step` (two [BT, KC/2] bf16 halves) into ring slot `slot`, off past the end."""
    ok = step < nk
    ta = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, LA))
    ka = gl.arange(0, KC // 2, layout=gl.SliceLayout(0, LA))
    pa = a16_ptr + ta[:, None].to(gl.int64) * K + step * KC + ka[None, :]
    async_copy.async_copy_global_to_shared(a_smem.index(2 * slot), pa, mask=ok)
    async_copy.async_copy_global_to_shared(a_smem.index(2 * slot + 1), pa + KC // 2, mask=ok)
    async_copy.commit_group()


@gluon.jit
def _decode(p, s, BM: gl.constexpr, LP: gl.constexpr, DOT: gl.constexpr):
    """Packed words [BM, KC/8] (int32, 8 codes each) and their block scales [BM, KC/16] (e4m3 bytes) ->
    the step's two wgmma A operands [BM, KC/2] bf16 (K halves), in the K order of the module docstring."""
    s = (s.to(gl.float8e4nv, bitcast=True).to(gl.float32) * TWO_POW_118).to(gl.bfloat16)
    s = gl.convert_layout(gl.reshape(gl.join(s, s), [BM, KC // 8]), LP, assert_trivial=True)  # a word's scale
    o = gl.inline_asm_elementwise(_DECODE_WORD_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [p, s],
                                  dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)  # fmt: skip
    # word 4t + 2bh + wl, outputs (p, a, h) -> (row, bh, column 16(2wl + a) + 8h + 2t + p)
    w = gl.join(gl.join(gl.join(o[0], o[1]), gl.join(o[2], o[3])), gl.join(gl.join(o[4], o[5]), gl.join(o[6], o[7])))
    w = gl.reshape(w, [BM, 4, 2, 2, 2, 2, 2])
    w = gl.reshape(gl.permute(w, (0, 2, 3, 5, 6, 1, 4)), [BM, 2, KC // 2])
    w0, w1 = gl.split(gl.permute(w, (0, 2, 1)))
    return gl.convert_layout(w0, DOT, assert_trivial=True), gl.convert_layout(w1, DOT, assert_trivial=True)


@gluon.jit
def _hold(w):
    """An empty asm that reads w's registers. Placed after the wgmma wait in the iteration that issued the
    wgmma (the same packed registers, so ptxas keeps them live until the wait): ptxas does not protect
    the registers an in-flight wgmma reads, and without this the next step's decode reused them (rows
    of garbage on the H100, and a SASS check finds the writes)."""
    gl.inline_asm_elementwise("", "=r,0", [w], dtype=gl.bfloat16, is_pure=False, pack=2)


@gluon.jit
def _gemm_sm90_kernel(a16_ptr, live_ptr, b_ptr, bs_ptr, bg_ptr, ag_ptr, tile_expert_ptr, offsets_ptr, n_experts,
                      out_ptr, N, K, groups, n_per_group,
                      BM: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
    NW: gl.constexpr = gl.num_warps()
    RM: gl.constexpr = BM // (16 * NW)  # register repeats of a warp's 16 rows
    pid_m = gl.program_id(0)  # weight tiles vary fastest: neighbours share the expert's token tile in L2
    pid_t = gl.program_id(1)
    e = gl.load(tile_expert_ptr + (pid_t * BT) // 128)
    live = gl.load(live_ptr + pid_t * (BT // 64))
    if BT == 128:
        live = gl.maximum(live, gl.load(live_ptr + pid_t * 2 + 1))
    live = (live > 0) & (pid_t * BT < gl.load(offsets_ptr + n_experts))
    nk = gl.where(live, K // KC, 0)
    t0 = pid_t * BT
    n0 = pid_m * BM

    LP: gl.constexpr = _words_layout(NW, RM, KC // 8)
    LS: gl.constexpr = _words_layout(NW, RM, KC // 16)
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [NW, 1], [1, 0])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BT, 16])
    DOT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, KC // 2], gl.bfloat16)
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES, BT, KC // 2], a_layout)

    # weight_tiles: per 64-row group [K/KC, 64, KC/2] codes and [K/KC, 64, KC/16] scales
    rp = n0 + gl.arange(0, BM, layout=gl.SliceLayout(1, LP))
    cp = gl.arange(0, KC // 8, layout=gl.SliceLayout(0, LP))
    rows_p = (rp // GROUP).to(gl.int64) * (K // KC) * (GROUP * KC // 8) + (rp % GROUP) * (KC // 8)
    pw = b_ptr.to(gl.pointer_type(gl.int32)) + e.to(gl.int64) * N * (K // 8) + rows_p[:, None] + cp[None, :]
    rs = n0 + gl.arange(0, BM, layout=gl.SliceLayout(1, LS))
    cs = gl.arange(0, KC // 16, layout=gl.SliceLayout(0, LS))
    rows_s = (rs // GROUP).to(gl.int64) * (K // KC) * (GROUP * KC // 16) + (rs % GROUP) * (KC // 16)
    ps = bs_ptr + e.to(gl.int64) * N * (K // 16) + rows_s[:, None] + cs[None, :]
    W_STEP: gl.constexpr = GROUP * KC // 8  # int32 words
    S_STEP: gl.constexpr = GROUP * KC // 16

    for st in gl.static_range(STAGES - 1):
        _issue_tokens(a16_ptr, a_smem, st, st, nk, t0, K, BT, LA)
    p1 = gl.load(pw + W_STEP, mask=nk > 1, other=0)  # raw codes two steps ahead of the decode
    s1 = gl.load(ps + S_STEP, mask=nk > 1, other=0)
    p2 = gl.load(pw + 2 * W_STEP, mask=nk > 2, other=0)
    s2 = gl.load(ps + 2 * S_STEP, mask=nk > 2, other=0)
    w0, w1 = _decode(gl.load(pw, mask=nk > 0, other=0), gl.load(ps, mask=nk > 0, other=0), BM, LP, DOT)
    acc = gl.zeros((BM, BT), dtype=gl.float32, layout=MMA)
    for i in range(nk):
        async_copy.wait_group(STAGES - 2)  # this thread's token copies of step i have landed
        fence_async_shared()  # ... and are visible to the wgmma's async proxy
        gl.thread_barrier()  # everyone's, and every warpgroup is done with step i - 1's slot
        _issue_tokens(a16_ptr, a_smem, (i + STAGES - 1) % STAGES, i + STAGES - 1, nk, t0, K, BT, LA)
        slot = i % STAGES
        acc = warpgroup_mma(w0, a_smem.index(2 * slot).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(w1, a_smem.index(2 * slot + 1).permute((1, 0)), acc, is_async=True)
        d0, d1 = _decode(p1, s1, BM, LP, DOT)  # step i + 1 beside step i's wgmma (zeros past the end)
        p1 = p2
        s1 = s2
        p2 = gl.load(pw + (i + 3) * W_STEP, mask=i + 3 < nk, other=0)
        s2 = gl.load(ps + (i + 3) * S_STEP, mask=i + 3 < nk, other=0)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        _hold(w0)  # step i's A fragments stay untouched until here (the decode above wrote others)
        _hold(w1)
        w0 = d0
        w1 = d1
    async_copy.wait_group(0)

    # out[t, n]: through a layout with n fastest so that the stores coalesce
    LO: gl.constexpr = gl.BlockedLayout([8, 1], [16, 2], [1, NW], [0, 1])
    acc = gl.convert_layout(acc, LO)
    n = n0 + gl.arange(0, BM, layout=gl.SliceLayout(1, LO))
    t = t0 + gl.arange(0, BT, layout=gl.SliceLayout(0, LO))
    alpha = gl.load(ag_ptr) * gl.load(bg_ptr + e * groups + n // n_per_group) * EPILOGUE_GAIN
    out = (acc * alpha[:, None]).to(gl.bfloat16)
    gl.store(out_ptr + t[None, :].to(gl.int64) * N + n[:, None], out)


CONFIGS = [  # (BM, BT, STAGES, warps): BM weight rows and BT tokens a CTA, 16 x warps x 1 or 2 rows a warp
    (256, 64, 3, 8),
    (128, 64, 3, 8),
    (128, 64, 3, 4),
    (64, 64, 4, 4),
    (128, 128, 3, 8),
    (256, 128, 3, 8),
]


def _tiles_dividing_n(configs, named, **_):
    return [c for c in configs if named["N"] % c.kwargs["BM"] == 0]


_tuned = triton.autotune(
    configs=[triton.Config({"BM": bm, "BT": bt, "STAGES": st}, num_warps=w) for bm, bt, st, w in CONFIGS],
    key=["N", "K"],
    prune_configs_by={"early_config_prune": _tiles_dividing_n},
)(_gemm_sm90_kernel)


def fits(n: int, k: int, device: torch.device) -> bool:
    """Whether this kernel takes the shape on this GPU: wgmma is SM90's alone."""
    return n % 128 == 0 and k % K_STEP == 0 and torch.cuda.get_device_capability(device) == (9, 0)


def launch(args: tuple, rows: int, n: int, config: tuple | None = None) -> None:
    """`grouped_gemm`'s arguments (gemm_args with A in `A_ORDER`); autotuned, or at `config` (BM, BT,
    STAGES, warps) for tests and the probe."""
    if config is None:
        _tuned[lambda meta: (n // meta["BM"], rows // meta["BT"])](*args)
        return
    bm, bt, st, w = config
    _gemm_sm90_kernel[(n // bm, rows // bt)](*args, BM=bm, BT=bt, STAGES=st, num_warps=w)


def tuned_config() -> str:
    cfg = getattr(_tuned, "best_config", None)
    if cfg is None:
        return ""
    return ", ".join(f"{k}={v}" for k, v in {**cfg.kwargs, "warps": cfg.num_warps}.items())
