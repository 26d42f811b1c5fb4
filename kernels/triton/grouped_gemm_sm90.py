"""The grouped NVFP4 GEMM's SM90 kernel, in Gluon (Triton's explicit-layout dialect): warp-specialized
and persistent, the decoded weights fed to wgmma from registers, f16 MMA with fp32 accumulation, over a
tile plan built on the GPU (`tile_plan`). On the H100, each at its steady clock under the board's power
limit (`fp4check bench`), it reaches 62-73% of the bf16 matmul rate at the Pro L1 and L2 shapes with
uniform routing and 52-57% with skewed routing, against 44-46% and 28-32% for the `tl.dot` kernel; at one
clock (the two alternating run by run) skewed routing is at 52.4-52.5% (L1) and 48.9-49.5% (L2)
(bench/results/h100_triton_bench_20261122j.csv, h100_triton_bench_skewed_20261122k.csv,
h100_power_regimes_20261122j.txt).

Orientation ("swap AB"): the weights are the MMA's M side (BM = 256 rows a tile, BM / PARTS per consumer
warpgroup), the tokens its N side (BT = 16, 32, 64 or 128 rows of one expert: one launch per size, over
the plan's list of blocks of that size). Per CTA, one per SM, looping over tiles:
- a producer warp streams every K step of 128 into a ring of STAGES shared-memory slots with TMA: A's
  f16 copy as two [BT, 64] boxes, and per 64-row weight group one 4 KB block of codes and one 512-byte
  block of scales (`weight_tiles`' layout), all on the slot's "ready" mbarrier. It waits on the slot's
  "empty" mbarrier first, so it runs STAGES steps ahead, into the next tile while the consumers store;
- PARTS consumer warpgroups, each its own partition: while step i's wgmmas run, each loads its rows of
  step i + 1 from shared memory (16 bytes of codes per thread and row, exactly its wgmma fragment's
  codes once A's K order matches, below) and decodes them in registers straight into the wgmma
  A-fragment layout (`convert_layout(..., assert_trivial=True)` proves no data moves), then waits for
  step i and frees the slot. The warpgroups sync only through the ring's barriers. Each tile's plan
  entry, expert and alpha are loaded a tile ahead (the plan stores each entry's expert beside it), so no
  tile starts or ends on a dependent global load.

f16, not bf16. A nibble's bits placed as an e4m3 byte (magnitude at bits 2..4, sign at bit 7) are the
e2m1 value x 2^-6, subnormals included (`references.e2m1.e2m1_as_e4m3`), and `cvt.rn.f16x2.e4m3x2`
turns two of them into f16 in one instruction: about 14 SASS instructions a word of 8 codes with the
block-scale multiply, against 22 for the bf16 bit construction of the `tl.dot` kernel. Every value is
exact either way: e2m1 x e4m3 products have at most 6 significant bits and lie in [2^-16, 42] (x 2^-6)
for the weights and [2^-10, 2688] for A, inside f16's range, so the MMA products and the fp32 sums are
those of the bf16 kernels.

What the measurements chose (same file): the single-partition version with the codes loaded from global
memory into registers two steps ahead ran at the `tl.dot` kernel's speed, 47% of DRAM bandwidth,
latency-bound. The TMA ring made it 3-6% faster; with one 8-warp consumer partition 38% of the stalls
were at the CTA barriers Triton inserts around shared-memory accesses, and two 4-warp partitions, whose
barriers are their own, gained 4-7%; the persistent loop 0-5% more (L2's shorter K loop gains most); the
f16 decode 8-10%. Decoding step i + 1 in two halves around step i's two wgmmas, BT = 128 and BM = 128
were no faster. Four consumer warpgroups of 64 rows (PARTS = 4, 112 registers each) made the 16- and
32-row tiles 3-6% faster a tile: their decode is bound by issue and latency (no pipe above 54% of its
peak), and four warps a scheduler hide more of it than two, though the per-step address and descriptor
work, now shared by 64 rows, adds 10% instructions; the 64-row tiles gained nothing and keep two. No
faster in any clock regime (h100_gemm_dropped_20261122j.txt): ring slots of two K steps (half the
mbarrier waits and arrives, 5% fewer instructions); a decode 2 instructions a word shorter (an upper
bound for weights stored with pre-placed bits); the 128-row tiles grouped so that the CTAs running at
once share each weight tile in L2 (2-10% slower). ptxas places each step's wgmma wait ahead of most of
the next step's decode (the SASS shows it), so that decode runs after the MMA, not beside it; keeping
two steps' wgmmas in flight made ptxas serialize every wgmma ("insufficient register resources for the
wgmma pipeline"), and a ready wait placed between the decode and the wgmma wait (a loop, which ptxas
does not schedule across) kept the decode before the wait but cost register copies: the 32-row launch
10% slower, the 64-row one 9-17%.
Two 128-row blocks of an expert as one 256-row token tile on 128 weight rows (each hot weight tile decoded
once for 256 tokens) was bit-equal but 4-14% slower (h100_gemm_pairs_dropped_20261122k.txt).

K order. Thread t (lane % 4) of a fragment holds columns j = 16b + 8h + 2t + p (b = 0..7 k16 blocks,
h, p = 0, 1) of the step. They are fed from byte 16t + 2b + h of the row piece, nibble p, i.e. from
k = 32t + 4b + 2h + p. The GEMM sums over K in any order, so `_prep_a_kernel` stores A's copy in that
order (`gemm_args(..., wgmma=True)`), and every product is the one the `tl.dot` kernel and the emulated
backend make: only the fp32 accumulation order differs.

Blocks with no live row (`live` flags from the A pass) or past offsets[-1] get a tile with no K steps,
and every tile stores zeros over the rest of its 128-row block, as the `tl.dot` kernel does. The
128-row tiles (tensor-core bound) run on a second stream beside the smaller ones (bound by the weights'
DRAM stream and the decode), each launch on the share of the SMs the plan computed from the tile counts
and TILE_COST; its other CTAs exit at once. Nothing syncs with the host, so the launches, the stream
fork and the join are captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from fp4check.kernels.triton.grouped_gemm import BLOCK_FLAGS, _span
from fp4check.kernels.triton.tile_plan import BLOCK, CHUNK, TOKEN_TILES
from fp4check.kernels.triton.weight_tiles import K_STEP, ROWS

KC = gl.constexpr(K_STEP)
GROUP = gl.constexpr(ROWS)
PRODUCER_REGS = gl.constexpr(40)  # the TMA warp holds a few scalars
CONSUMER_REGS = gl.constexpr(232)  # the second of two consumer warpgroups (the first gets what is left)
QUARTER_REGS = gl.constexpr(112)  # the second to fourth of four (the first gets what is left: 104)

# One word of 8 packed codes ($8; bytes b0..b3) and its block scale ($9, f16) -> 8 f16 e2m1 x s x 2^-6
# (given back in the epilogue): ($0, $1) = low nibbles of (b0, b1), ($2, $3) of (b2, b3), then the high
# nibbles. Each pair is one wgmma fragment register (columns 2t, 2t + 1). A nibble's magnitude bits go to
# bits 2..4 of an e4m3 byte and its sign to bit 7: that e4m3 value is the e2m1 value x 2^-6 for all 16
# codes (subnormals included), and one cvt turns two such bytes into f16x2.
_DECODE_WORD_PTX = gl.constexpr("""{
.reg .b32 lo, hi, t, sc, f;
.reg .b16 l0, l1, h0, h1;
mov.b32 sc, {$9, $9};
shl.b32 lo, $8, 2; and.b32 lo, lo, 0x1C1C1C1C; shl.b32 t, $8, 4; and.b32 t, t, 0x80808080; or.b32 lo, lo, t;
shr.b32 hi, $8, 2; and.b32 hi, hi, 0x1C1C1C1C; and.b32 t, $8, 0x80808080; or.b32 hi, hi, t;
mov.b32 {l0, l1}, lo;
mov.b32 {h0, h1}, hi;
cvt.rn.f16x2.e4m3x2 f, l0; mul.rn.f16x2 f, f, sc; mov.b32 {$0, $1}, f;
cvt.rn.f16x2.e4m3x2 f, l1; mul.rn.f16x2 f, f, sc; mov.b32 {$2, $3}, f;
cvt.rn.f16x2.e4m3x2 f, h0; mul.rn.f16x2 f, f, sc; mov.b32 {$4, $5}, f;
cvt.rn.f16x2.e4m3x2 f, h1; mul.rn.f16x2 f, f, sc; mov.b32 {$6, $7}, f;
}""")
WEIGHT_GAIN = gl.constexpr(64.0)  # gives back the 2^-6
BLOCK_ROWS = tl.constexpr(BLOCK)
# The split's weights: CTA-microseconds a tile of each token tile size takes at BM = 256, K = 7168 on the
# H100, each size's launch alone on half of the SMs (the probe's "CTA-us a tile" at PROBE_CTAS=66, mean of
# L1 and L2, bench/results/h100_gemm_parts_probe_20261122i.txt); the 128-row tiles' alone gave 72-77, but
# beside the small tiles' DRAM stream they slow more, and 84 was the best whole-plan split (75 and 92
# slower at both shapes, same file)
TILE_COST = {16: 41, 32: 51, 64: 68, 128: 84}


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
def _entry(tile, tiles, n_m, plan_ptr, expert_ptr):
    """Tile `tile`'s plan entry and expert (weight tiles vary fastest: neighbours share the expert's token
    tile in L2): two independent loads, so that a consumer can issue the next tile's a whole tile ahead;
    zeros past the last tile."""
    inside = tile < tiles
    entry = gl.load(plan_ptr + tile // n_m, mask=inside, other=0)
    return entry, gl.load(expert_ptr + tile // n_m, mask=inside, other=0)


@gluon.jit
def _tile(tile, entry, n_m, K):
    """A plan entry (`tile_plan`) -> the tile's weight tile, first row and K steps (0: no live row)."""
    return tile % n_m, entry // 2, gl.where(entry % 2 == 1, K // KC, 0)


@gluon.jit
def _producer(a_desc, b_desc, s_desc, a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr,
              expert_ptr, N, K):  # fmt: skip
    """One warp: for each of this CTA's tiles, TMA of every K step into the next ring slot once both
    consumers have freed it, all on the slot's ready barrier: A's two [BT, KC/2] f16 halves, then per
    64-row weight group its [64, KC/2] codes and its 512 scale bytes. It runs ahead into the next tile
    while the consumers store the last one."""
    STAGES: gl.constexpr = b_smem.type.shape[0]  # from the buffers: constexpr arguments of a second worker
    BM: gl.constexpr = b_smem.type.shape[1]  # partition arrive as tensors (Triton 3.6)
    BT: gl.constexpr = a_smem.type.shape[1]
    it = 0  # K steps issued so far: ring slot it % STAGES, phase (it // STAGES) & 1
    for tile in range(first, tiles, ctas):
        entry, e = _entry(tile, tiles, n_m, plan_ptr, expert_ptr)
        pid_m, row0, nk = _tile(tile, entry, n_m, K)
        g0 = e * (N // GROUP) + pid_m * (BM // GROUP)
        for step in range(nk):
            slot = it % STAGES
            mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)  # passes at once on the first round
            bar = ready.index(slot)
            mbarrier.expect(bar, 2 * BT * KC + (BM // GROUP) * GROUP * (KC // 2 + KC // 16))
            tma.async_copy_global_to_shared(a_desc, [row0, step * KC], bar, a_smem.index(2 * slot))
            tma.async_copy_global_to_shared(a_desc, [row0, step * KC + KC // 2], bar, a_smem.index(2 * slot + 1))
            for j in gl.static_range(BM // GROUP):
                block = (g0 + j) * (K // KC) + step  # weight_tiles: group g's step is block g * K/KC + step
                tma.async_copy_global_to_shared(
                    b_desc, [block * GROUP, 0], bar, b_smem.index(slot).slice(j * GROUP, GROUP)
                )
                tma.async_copy_global_to_shared(s_desc, [block * 2, 0], bar, s_smem.index(slot).slice(j * 2, 2))
            it += 1


@gluon.jit
def _weights(b_smem, s_smem, slot, ROW0: gl.constexpr, BM: gl.constexpr, LP: gl.constexpr, LS: gl.constexpr):
    """Rows ROW0 .. ROW0 + BM of a ring slot: packed codes [BM, KC/8] int32 and scales [BM, KC/16] bytes (a
    64-row group's 512 scale bytes are two 256-byte rows of s_smem), in the decode's layouts."""
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    p = b_smem.index(slot).slice(ROW0, BM)._reinterpret(gl.int32, [BM, KC // 8], PLAIN).load(LP)
    s = s_smem.index(slot).slice(ROW0 // 32, BM // 32)._reinterpret(gl.uint8, [BM, KC // 16], PLAIN).load(LS)
    return p, s


@gluon.jit
def _consumer(a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N, K, ag_ptr,
              bg_ptr, groups, n_per_group, out_ptr, PART: gl.constexpr, PARTS: gl.constexpr):  # fmt: skip
    """One warpgroup of PARTS, weight rows PART x BM/PARTS .. of each tile: decode step i + 1 in registers
    while step i's wgmma runs, free a slot once its wgmma is done (one arrive per consumer), then scale by
    alpha and store out[tokens, rows], and zeros over the rest of the tile's 128-row block (no live row)."""
    STAGES: gl.constexpr = b_smem.type.shape[0]
    BM: gl.constexpr = b_smem.type.shape[1] // PARTS
    BT: gl.constexpr = a_smem.type.shape[1]
    ROW0: gl.constexpr = PART * BM
    NW: gl.constexpr = gl.num_warps()
    RM: gl.constexpr = BM // (16 * NW)  # register repeats of a warp's 16 rows
    LP: gl.constexpr = _words_layout(NW, RM, KC // 8)
    LS: gl.constexpr = _words_layout(NW, RM, KC // 16)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BT, 16])
    DOT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    LO: gl.constexpr = gl.BlockedLayout([BM // 16, 1], [16, 2], [1, NW], [0, 1])  # n fastest: coalesced stores
    it = 0  # K steps consumed so far, as the producer counts them
    a_gain = gl.load(ag_ptr) * WEIGHT_GAIN
    nxt_entry, nxt_e = _entry(first, tiles, n_m, plan_ptr, expert_ptr)
    for tile in range(first, tiles, ctas):
        # the next tile's entry and this tile's alpha are loaded here and used a tile later: at the tile's
        # end, or in the next tile, the global loads' latency (~1 us under load) no longer stalls the warps
        entry, e = nxt_entry, nxt_e
        nxt_entry, nxt_e = _entry(tile + ctas, tiles, n_m, plan_ptr, expert_ptr)
        pid_m, row0, nk = _tile(tile, entry, n_m, K)
        n0 = pid_m * PARTS * BM + ROW0
        # alpha in the accumulator's layout: the epilogue moves bf16, half the registers of the fp32 sums
        alpha = a_gain * gl.load(
            bg_ptr + e * groups + (n0 + gl.arange(0, BM, layout=gl.SliceLayout(1, MMA))) // n_per_group
        )
        mbarrier.wait(ready.index(it % STAGES), (it // STAGES) & 1, pred=nk > 0)
        p, s = _weights(b_smem, s_smem, it % STAGES, ROW0, BM, LP, LS)
        w0, w1 = _decode(p, s, BM, LP, DOT)
        acc = gl.zeros((BM, BT), dtype=gl.float32, layout=MMA)
        # two steps a turn, so that the decoded operands alternate between two sets of registers: with one
        # step a turn, ptxas copied the next step's 64 registers into the current step's every step
        for i in range(nk // 2):
            acc, d0, d1 = _step(w0, w1, acc, a_smem, b_smem, s_smem, ready, empty, it, True, ROW0, BM, LP, LS, DOT)
            acc, w0, w1 = _step(d0, d1, acc, a_smem, b_smem, s_smem, ready, empty, it + 1, 2 * i + 2 < nk,
                                ROW0, BM, LP, LS, DOT)  # fmt: skip
            it += 2
        if nk % 2 == 1:
            acc, w0, w1 = _step(w0, w1, acc, a_smem, b_smem, s_smem, ready, empty, it, False, ROW0, BM, LP, LS, DOT)
            it += 1
        out = gl.convert_layout((acc * alpha[:, None]).to(gl.bfloat16), LO)
        n = n0 + gl.arange(0, BM, layout=gl.SliceLayout(1, LO))
        t = row0 + gl.arange(0, BT, layout=gl.SliceLayout(0, LO))
        dst = out_ptr + t[None, :].to(gl.int64) * N + n[:, None]
        gl.store(dst, out)
        for z in gl.static_range(1, 128 // BT):
            gl.store(dst + z * BT * N, gl.zeros((BM, BT), gl.bfloat16, LO))


@gluon.jit
def _step(w0, w1, acc, a_smem, b_smem, s_smem, ready, empty, it, more, ROW0: gl.constexpr, BM: gl.constexpr,
          LP: gl.constexpr, LS: gl.constexpr, DOT: gl.constexpr):  # fmt: skip
    """K step `it` of a consumer: its two wgmmas on the decoded operands w0, w1, meanwhile step it + 1's
    decode (its slot's stale bytes, never used, where there is no `more` step), then the wait and the slot
    freed. Returns (acc, step it + 1's operands)."""
    STAGES: gl.constexpr = b_smem.type.shape[0]
    slot = it % STAGES
    acc = warpgroup_mma(w0, a_smem.index(2 * slot).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w1, a_smem.index(2 * slot + 1).permute((1, 0)), acc, is_async=True)
    nxt = it + 1
    mbarrier.wait(ready.index(nxt % STAGES), (nxt // STAGES) & 1, pred=more)
    p, s = _weights(b_smem, s_smem, nxt % STAGES, ROW0, BM, LP, LS)
    d0, d1 = _decode(p, s, BM, LP, DOT)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    _hold(w0)  # step it's operands stay untouched until here (the decode above wrote others)
    _hold(w1)
    fence_async_shared()  # this slot's reads before the producer's next TMA writes into it
    mbarrier.arrive(empty.index(slot), count=1)
    return acc, d0, d1


@gluon.jit
def _decode(p, s, BM: gl.constexpr, LP: gl.constexpr, DOT: gl.constexpr):
    """Packed words [BM, KC/8] (int32, 8 codes each) and their block scales [BM, KC/16] (e4m3 bytes) ->
    the step's two wgmma A operands [BM, KC/2] f16 (K halves, x 2^-6), in the module docstring's K order."""
    s = s.to(gl.float8e4nv, bitcast=True).to(gl.float16)  # exact: e4m3 is a subset of f16
    s = gl.convert_layout(gl.reshape(gl.join(s, s), [BM, KC // 8]), LP, assert_trivial=True)  # a word's scale
    o = gl.inline_asm_elementwise(_DECODE_WORD_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [p, s],
                                  dtype=(gl.float16,) * 8, is_pure=True, pack=1)  # fmt: skip
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
    gl.inline_asm_elementwise("", "=r,0", [w], dtype=w.dtype, is_pure=False, pack=2)


@gluon.jit
def _gemm_sm90_kernel(a_desc, b_desc, s_desc, plan_ptr, expert_ptr, count_ptr, ctas_ptr, bg_ptr, ag_ptr, out_ptr,
                      N, K, groups, n_per_group, BM: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr,
                      PARTS: gl.constexpr):  # fmt: skip
    """Persistent: CTA pid < ctas (the plan's share of the SMs for this launch) takes tiles pid, pid +
    ctas, ... of (N / BM) weight tiles x the plan's list of BT-row token tiles; the others exit. PARTS
    consumer warpgroups (2 or 4) share each tile's BM rows."""
    a_smem = gl.allocate_shared_memory(gl.float16, [2 * STAGES, BT, KC // 2], a_desc.layout)
    b_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BM, KC // 2], b_desc.layout)
    s_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, 2 * BM // GROUP, GROUP * KC // 32], s_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for st in gl.static_range(STAGES):
        mbarrier.init(ready.index(st), count=1)
        mbarrier.init(empty.index(st), count=PARTS)  # one arrive from each consumer warpgroup
    n_m = N // BM
    tiles = n_m * gl.load(count_ptr)
    ctas = gl.maximum(gl.load(ctas_ptr), 1)
    first = gl.where(gl.program_id(0) < ctas, gl.program_id(0), tiles)
    # the partition lists spelled out: a Gluon kernel cannot build them in a loop or from a tuple holding
    # the functions (Triton 3.6)
    if PARTS == 2:
        gl.warp_specialize(
            [(_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 0, 2)),
             (_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 1, 2)),
             (_producer, (a_desc, b_desc, s_desc, a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m,
                          plan_ptr, expert_ptr, N, K))],
            [4, 1],
            [CONSUMER_REGS, PRODUCER_REGS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [(_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 0, 4)),
             (_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 1, 4)),
             (_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 2, 4)),
             (_consumer, (a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m, plan_ptr, expert_ptr, N,
                          K, ag_ptr, bg_ptr, groups, n_per_group, out_ptr, 3, 4)),
             (_producer, (a_desc, b_desc, s_desc, a_smem, b_smem, s_smem, ready, empty, first, tiles, ctas, n_m,
                          plan_ptr, expert_ptr, N, K))],
            [4, 4, 4, 1],
            [QUARTER_REGS, QUARTER_REGS, QUARTER_REGS, PRODUCER_REGS],
        )  # fmt: skip


@triton.jit
def _plan_kernel(live_ptr, offsets_ptr, tile_expert_ptr, n_experts, plan_ptr, expert_ptr, count_ptr, split_ptr, total,
                 blocks, cost_16, cost_32, cost_64, cost_128, BATCH: tl.constexpr):  # fmt: skip
    """One program: BATCH blocks at a time, each block's class from its last live chunk, then per class a
    running prefix sum places the block's entry, and beside it its expert, in that class's list. Then the
    split of `total` CTAs between the 128-row tiles and the smaller ones, in proportion to their cost
    (TILE_COST)."""
    end = tl.load(offsets_ptr + n_experts)
    chunk = tl.arange(0, BLOCK_FLAGS)
    cls_ids = tl.arange(0, 4)
    counts = tl.zeros([4], dtype=tl.int32)
    for b0 in range(0, blocks, BATCH):
        b = b0 + tl.arange(0, BATCH)
        inside = b < blocks
        flags = tl.load(live_ptr + b[:, None] * BLOCK_FLAGS + chunk[None, :], mask=inside[:, None], other=0)
        span = tl.where(b.to(tl.int64) * BLOCK_ROWS < end, _span(flags, 16), 0)  # rows its tile covers
        cls = tl.where(span <= 16, 0, tl.where(span <= 32, 1, tl.where(span <= 64, 2, 3)))  # TOKEN_TILES index
        entry = b * (2 * BLOCK_ROWS) + (span > 0).to(tl.int32)
        expert = tl.load(tile_expert_ptr + b, mask=inside, other=0)
        for c in tl.static_range(4):
            mine = (cls == c) & inside
            base = tl.sum(tl.where(cls_ids == c, counts, 0))
            pos = base + tl.cumsum(mine.to(tl.int32), 0) - 1
            tl.store(plan_ptr + c * blocks + pos, entry, mask=mine)
            tl.store(expert_ptr + c * blocks + pos, expert, mask=mine)
            counts += tl.where(cls_ids == c, tl.sum(mine.to(tl.int32)), 0)
    tl.store(count_ptr + cls_ids, counts)
    cost = counts.to(tl.int64) * tl.where(
        cls_ids == 0, cost_16, tl.where(cls_ids == 1, cost_32, tl.where(cls_ids == 2, cost_64, cost_128))
    )
    hot = tl.sum(tl.where(cls_ids == 3, cost, 0))
    work = tl.maximum(tl.sum(cost), 1)
    n_hot = tl.sum(tl.where(cls_ids == 3, counts, 0))
    n_small = tl.sum(tl.where(cls_ids < 3, counts, 0))
    h = ((total * hot + work // 2) // work).to(tl.int32)
    h = tl.minimum(tl.maximum(h, tl.minimum(n_hot, 1)), total - tl.minimum(n_small, 1))
    tl.store(split_ptr + tl.arange(0, 2), tl.where(tl.arange(0, 2) == 0, total - h, h))


def build_plan(
    live: torch.Tensor, offsets: torch.Tensor, tile_expert: torch.Tensor, total: int = 1
) -> tuple[torch.Tensor, ...]:
    """`tile_plan`'s rule on the GPU, for 16-row live flags (int32 [rows / 16]), offsets (int64 [E + 1]) and
    each 128-row block's expert (int32): (plan, experts: int32 [len(TOKEN_TILES), blocks], counts int32
    [len(TOKEN_TILES)], split int32 [2]); list i's first counts[i] entries are its tiles, experts[i] their
    experts; split: CTAs of `total` for the smaller token tiles, for the 128-row ones."""
    blocks = live.numel() * CHUNK // BLOCK
    plan = torch.empty(len(TOKEN_TILES), blocks, dtype=torch.int32, device=live.device)
    experts = torch.empty_like(plan)
    counts = torch.empty(len(TOKEN_TILES), dtype=torch.int32, device=live.device)
    split = torch.empty(2, dtype=torch.int32, device=live.device)
    _plan_kernel[(1,)](
        live,
        offsets,
        tile_expert,
        offsets.numel() - 1,
        plan,
        experts,
        counts,
        split,
        total,
        blocks,
        *(TILE_COST[bt] for bt in TOKEN_TILES),
        BATCH=256,
        num_warps=4,
    )
    return plan, experts, counts, split


# BT (`tile_plan.TOKEN_TILES`) -> (BM, STAGES, PARTS): BM weight rows a tile, ring depth, consumer
# warpgroups (BM / PARTS rows each). Measured on the H100 at the Pro shapes (the probe's "wgmma" grid,
# bench/results/); NARROW serves N that 256 does not divide.
CONFIGS = {16: (256, 8, 4), 32: (256, 6, 4), 64: (256, 4, 2), 128: (256, 3, 2)}
NARROW = {16: (128, 8, 2), 32: (128, 8, 2), 64: (128, 8, 2), 128: (128, 4, 2)}
last_config = ""  # the configs of the last launch, for bench's CSV


def fits(n: int, k: int, device: torch.device) -> bool:
    """Whether this kernel takes the shape on this GPU: wgmma is SM90's alone."""
    return n % 128 == 0 and k % K_STEP == 0 and torch.cuda.get_device_capability(device) == (9, 0)


def _descriptors(a16: torch.Tensor, b_packed: torch.Tensor, b_scales: torch.Tensor, bt: int) -> tuple:
    """TMA descriptors: A's f16 copy in [bt, KC/2] boxes (128-byte swizzle, as wgmma reads it), the tiled
    weights' codes as [64 rows, KC/2] blocks and their scales as 512-byte blocks (no swizzle: the decode
    reads them row by row)."""
    plain = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)
    a_layout = gl.NVMMASharedLayout.get_default_for([bt, K_STEP // 2], gl.float16)
    return (
        TensorDescriptor.from_tensor(a16, [bt, K_STEP // 2], a_layout),
        TensorDescriptor.from_tensor(b_packed.view(-1, K_STEP // 2), [ROWS, K_STEP // 2], plain),
        TensorDescriptor.from_tensor(b_scales.view(-1, ROWS * K_STEP // 32), [2, ROWS * K_STEP // 32], plain),
    )


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _side_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(index)


def launch(args: tuple, configs: dict | None = None, ctas: int | None = None, sizes=TOKEN_TILES) -> list:
    """Run the kernel on `grouped_gemm`'s arguments (`gemm_args(..., wgmma=True)`, tiled weights) at
    `configs` (BT -> (BM, STAGES, PARTS); default CONFIGS, or NARROW) on one CTA per SM, or `ctas` (tests: many
    tiles a CTA): the tile plan, then the 128-row tiles on a second stream beside the 16- to 64-row ones
    on this one, each on its share of the CTAs (the plan's split), joined before return. The 128-row
    tiles are bound by the tensor cores and the small ones by the weights' DRAM stream: side by side on
    separate SMs they overlap. `sizes` other than all: only those launches, one after another, each on
    all CTAs (the probe times them one by one). Returns the compiled kernels (the probe reads their
    registers)."""
    global last_config
    a16, live, b_packed, b_scales, bg, ag, tile_expert, offsets, _, out, n, k, groups, n_per_group = args
    configs = configs or (CONFIGS if n % 256 == 0 else NARROW)
    device = a16.device.index if a16.device.index is not None else torch.cuda.current_device()
    total = ctas or _sms(device)
    plan, experts, counts, split = build_plan(live, offsets, tile_expert, total)
    overlap = tuple(sizes) == TOKEN_TILES
    if not overlap:
        split = torch.full((2,), total, dtype=torch.int32, device=a16.device)
    here = torch.cuda.current_stream(device)
    side = _side_stream(device) if overlap else here
    if overlap:
        side.wait_stream(here)
    compiled = []
    for i, bt in reversed(list(enumerate(TOKEN_TILES))):  # the 128-row launch first, on the side stream
        if bt not in sizes:
            continue
        bm, stages, parts = configs[bt]
        assert bm % (64 * parts) == 0, f"BM {bm} is not {parts} warpgroups of 64-row wgmmas"
        descs = _descriptors(a16, b_packed, b_scales.view(torch.uint8), bt)
        grid = (min(total, n // bm * plan.shape[1]),)
        kargs = (plan[i], experts[i], counts[i:], split[int(bt == TOKEN_TILES[-1]) :], bg, ag, out, n, k, groups)
        with torch.cuda.stream(side if bt == TOKEN_TILES[-1] else here):
            compiled.append(
                _gemm_sm90_kernel[grid](
                    *descs, *kargs, n_per_group, BM=bm, BT=bt, STAGES=stages, PARTS=parts, num_warps=4
                )
            )
    if overlap:
        here.wait_stream(side)
    last_config = "; ".join("BT={}: BM={}, STAGES={}, PARTS={}".format(bt, *configs[bt]) for bt in sizes)
    return compiled
