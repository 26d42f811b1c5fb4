"""The grouped NVFP4 GEMM's SM90 main loop, written in Gluon (Triton's explicit-layout dialect) so that the
weight decode overlaps the tensor cores; grouped_gemm.py picks it on SM90 and keeps its `tl.dot` main loop
for every other GPU.

Why: in the `tl.dot` kernel each K step decodes the weight tile, stores it to shared memory, runs the
MMA and waits for it (Triton pins that wait, since the next step overwrites the decoded tile), so the
ALU decode and the tensor cores take turns; its best tile also computes 128-row token tiles when the
experts hold about 64 rows (the Pro decode shapes), half of them padding. Here, per CTA of one
warpgroup (4 warps) or two:
- tokens are the MMA's M side in 64-row tiles (`live` flags skip tiles of padding), weights the N side;
- a ring of STAGES shared-memory slots is filled by cp.async (A's even and odd K halves, bf16; the packed
  weight bytes; their e4m3 scales) STAGES - 1 steps ahead;
- step i decodes its weight bytes in registers (the same inline PTX as the `tl.dot` kernel: each output
  element from its own byte and scale) while the wgmma of step i - 1 is still running, then waits for it,
  stores the two bf16 planes (low nibbles = even K, high nibbles = odd K) and issues step i's two wgmmas
  without waiting (K = 64 each, A from the ring, the decoded tile transposed as B);
- the epilogue multiplies by alpha (x 2^8, the decode's 2^-8 given back) and writes bf16.
The values into the MMAs are those of the `tl.dot` kernel; only the fp32 accumulation order may differ.
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
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from fp4check.kernels.triton.grouped_gemm import _DECODE_PTX, EPILOGUE_GAIN, KC, TWO_POW_118

BT = gl.constexpr(64)  # token rows per tile: the wgmma M of one warpgroup
TILE_N = (256, 128, 64)  # the weight tiles the autotuner chooses from; N must be a multiple of the smallest


@gluon.jit
def _issue_loads(a16_ptr, b_ptr, bs_ptr, a_smem, w_smem, s_smem, slot, step, nk, t0, e, n0, N, K, KS,
                 BN: gl.constexpr, SUB: gl.constexpr, LA: gl.constexpr, LW: gl.constexpr, LS: gl.constexpr):  # fmt: skip
    """cp.async pipeline step `step` (SUB K steps of KC) into ring slot `slot`, predicated off past the last
    step: per K step A's even and odd K halves [BT, KC/2] bf16, the packed weights [BN, KC/2] bytes and
    their scales [BN, KC/16]. With SUB = 2 a weight row's two 64-byte pieces are asked for together."""
    ok = step < nk
    ta = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, LA))
    ka = gl.arange(0, KC // 2, layout=gl.SliceLayout(0, LA))
    nw = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, LW))
    kw = gl.arange(0, KC // 2, layout=gl.SliceLayout(0, LW))
    ns = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, LS))
    ks = gl.arange(0, KC // 16, layout=gl.SliceLayout(0, LS))
    for j in gl.static_range(SUB):
        k0 = (step * SUB + j) * KC
        i = slot * SUB + j
        pa = a16_ptr + ta[:, None].to(gl.int64) * K + k0 + ka[None, :]
        async_copy.async_copy_global_to_shared(a_smem.index(2 * i), pa, mask=ok)
        async_copy.async_copy_global_to_shared(a_smem.index(2 * i + 1), pa + KC // 2, mask=ok)
        pw = b_ptr + (e.to(gl.int64) * N + nw[:, None]) * (K // 2) + k0 // 2 + kw[None, :]
        async_copy.async_copy_global_to_shared(w_smem.index(i), pw, mask=ok)
        # KS = K / 16 is its own argument so that the compiler sees 8-byte aligned scale rows (cp.async >= 4 B)
        ps = bs_ptr + (e.to(gl.int64) * N + ns[:, None]) * KS + k0 // 16 + ks[None, :]
        async_copy.async_copy_global_to_shared(s_smem.index(i), ps, mask=ok)
    async_copy.commit_group()


def _tiles_dividing_n(configs, named, **_):
    return [c for c in configs if named["N"] % c.kwargs["BN"] == 0]


@triton.autotune(
    configs=[
        triton.Config({"BN": 128, "SUB": 1, "STAGES": 3}, num_warps=4),
        triton.Config({"BN": 128, "SUB": 2, "STAGES": 2}, num_warps=4),
        triton.Config({"BN": 128, "SUB": 2, "STAGES": 2}, num_warps=8),
        triton.Config({"BN": 64, "SUB": 2, "STAGES": 3}, num_warps=4),
    ],
    key=["N", "K"],
    prune_configs_by={"early_config_prune": _tiles_dividing_n},
)
@gluon.jit
def _gemm_wgmma_kernel(a16_ptr, live_ptr, b_ptr, bs_ptr, bg_ptr, ag_ptr, tile_expert_ptr, offsets_ptr, n_experts,
                       out_ptr, N, K, KS, groups, n_per_group, BN: gl.constexpr, SUB: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
    pid_n = gl.program_id(0)  # N tiles vary fastest: neighbours share the expert's A tile in L2
    pid_t = gl.program_id(1)
    e = gl.load(tile_expert_ptr + (pid_t * BT) // 128)
    live = (gl.load(live_ptr + pid_t) > 0) & (pid_t * BT < gl.load(offsets_ptr + n_experts))
    nk = gl.where(live, K // (KC * SUB), 0)
    t0 = pid_t * BT
    n0 = pid_n * BN

    NW: gl.constexpr = gl.num_warps()
    # loads of 16 bytes per thread; the decode on [BN, K blocks of 16, 8 bytes] so a scale broadcasts
    # over its 8 bytes inside a thread
    LA: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [NW, 1], [1, 0])
    LW: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [NW, 1], [1, 0])
    LS: gl.constexpr = gl.BlockedLayout([1, 8], [32, 1], [NW, 1], [1, 0])
    L3: gl.constexpr = gl.BlockedLayout([1, 1, 8], [4, 8, 1], [NW, 1, 1], [2, 1, 0])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, NW // 4],
                                                  instr_shape=[16, BN // (NW // 4), 16])  # fmt: skip
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, KC // 2], gl.bfloat16)
    d_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, KC // 2], gl.bfloat16)
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [2 * SUB * STAGES, BT, KC // 2], a_layout)
    w_smem = gl.allocate_shared_memory(gl.uint8, [SUB * STAGES, BN, KC // 2], gl.SwizzledSharedLayout(16, 1, 1, [1, 0]))
    s_smem = gl.allocate_shared_memory(gl.uint8, [SUB * STAGES, BN, KC // 16], gl.SwizzledSharedLayout(8, 1, 1, [1, 0]))
    d_smem = gl.allocate_shared_memory(gl.bfloat16, [2 * SUB, BN, KC // 2], d_layout)

    for st in gl.static_range(STAGES - 1):
        _issue_loads(a16_ptr, b_ptr, bs_ptr, a_smem, w_smem, s_smem, st, st, nk, t0, e, n0, N, K, KS, BN, SUB,
                     LA, LW, LS)  # fmt: skip
    acc = warpgroup_mma_init(gl.zeros((BT, BN), dtype=gl.float32, layout=MMA))
    for i in range(nk):
        slot = i % STAGES
        async_copy.wait_group(STAGES - 2)  # this thread's copies of step i have landed
        gl.thread_barrier()  # ... and everyone's
        for j in gl.static_range(SUB):
            p = w_smem.index(slot * SUB + j).reshape([BN, KC // 16, 8]).load(L3)
            s = s_smem.index(slot * SUB + j).load(gl.SliceLayout(2, L3))
            s = gl.expand_dims((s.to(gl.float8e4nv, bitcast=True).to(gl.float32) * TWO_POW_118).to(gl.bfloat16), 2)
            w_lo, w_hi = gl.inline_asm_elementwise(
                _DECODE_PTX, "=r,=r,=r,=r,r,r,r", [p, s], dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4
            )
            if j == 0:  # the first decode ran beside step i - 1's MMAs; they must be done with d_smem now
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()  # in both warpgroups, before anyone overwrites it
            d_smem.index(2 * j).store(gl.reshape(w_lo, [BN, KC // 2]))
            d_smem.index(2 * j + 1).store(gl.reshape(w_hi, [BN, KC // 2]))
        fence_async_shared()  # generic-proxy stores (and the cp.async data), then the MMA's async proxy
        gl.thread_barrier()
        for j in gl.static_range(2 * SUB):
            a_op = a_smem.index(2 * slot * SUB + j)
            acc = warpgroup_mma(a_op, d_smem.index(j).permute((1, 0)), acc, is_async=True)
        # the slot step i - 1 used is free (its MMAs are done, everyone passed the barrier): refill it
        nxt = i + STAGES - 1
        _issue_loads(a16_ptr, b_ptr, bs_ptr, a_smem, w_smem, s_smem, nxt % STAGES, nxt, nk, t0, e, n0, N, K, KS,
                     BN, SUB, LA, LW, LS)  # fmt: skip
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    async_copy.wait_group(0)

    n = n0 + gl.arange(0, BN, layout=gl.SliceLayout(0, MMA))
    t = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, MMA))
    alpha = gl.load(ag_ptr) * gl.load(bg_ptr + e * groups + n // n_per_group) * EPILOGUE_GAIN
    out = (acc * alpha[None, :]).to(gl.bfloat16)
    gl.store(out_ptr + t[:, None].to(gl.int64) * N + n[None, :], out)


def fits(n: int, k: int) -> bool:
    """Whether this main loop takes the shape (and this GPU is an SM90). K / 16 must be a multiple of 16:
    only then does the launcher mark KS 16-divisible, and the scale copies need 8-byte alignment."""
    return n % min(TILE_N) == 0 and k % 256 == 0 and torch.cuda.get_device_capability() == (9, 0)


def launch(a16, live, b_packed, b_scales, b_global, a_global, tile_expert, offsets, out, n, k, groups) -> None:
    """The grid over (weight tiles, 64-row token tiles); the arguments as grouped_gemm prepares them."""
    rows = out.shape[0]
    e = b_packed.shape[0]
    _gemm_wgmma_kernel[lambda meta: (n // meta["BN"], rows // 64)](
        a16, live, b_packed, b_scales, b_global, a_global, tile_expert, offsets, e, out, n, k, k // 16, groups,
        n // groups,
    )  # fmt: skip
