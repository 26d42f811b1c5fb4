"""Grouped NVFP4 GEMM for SM90 in the CUTLASS Python DSL: the MoE L1/L2 over expert-sorted, 128-padded
rows. SM90 has no FP4 tensor cores and no e2m1 conversion, so both operands are decoded to bf16 first by
a DSL kernel (e2m1 built from bits with integer ops, times its e4m3 block scale: exact in bf16, at most
5 significant bits), then multiplied by bf16 WGMMA (wgmma.mma_async, operands brought in by TMA,
fp32 accumulation) with alpha = S_dec(a) * S_dec(b)[expert, column group] in the epilogue.

Each 128-row tile belongs to one expert: `tile_expert` [P/128] (computed on the GPU from the offsets,
no host sync) picks the expert's slice of B, the L mode of the (N, K, E) weight tensor. Tiles past
offsets[-1] (a plan sized before routing; tile_expert >= E) write zeros and skip their K loop; tiles
marked < 0 are left untouched, so the weights can be decoded and multiplied a chunk of experts at a
time (bounded memory: 384 Pro experts of w13 in bf16 would take 34 GB).
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import BFloat16, Float32, Int32
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.utils import LayoutEnum

from fp4check.kernels.cutedsl import ptx

BM, BN, BK = 128, 128, 64
STAGES = 4
THREADS = 128  # one warpgroup: warp 0 also issues the TMA loads
DEQUANT_THREADS = 128


# --- NVFP4 -> bf16 ----------------------------------------------------------------------------------


@cute.jit
def _e2m1_f32(code: Int32) -> Float32:
    """float32 value of an e2m1 code (0..15) from bits: 0.5 is 0x3F000000; magnitudes 2..7 are
    2^(e-1) (1 + m/2) with e = mag >> 1, m = mag & 1."""
    mag = code & 7
    normal = (((mag >> 1) + 126) << 23) | ((mag & 1) << 22)
    bits = cutlass.select_(mag < 2, mag * 0x3F000000, normal) | ((code & 8) << 28)
    return ptx.f32_bits(bits)


@cute.kernel
def _dequant_kernel(
    packed_words: cute.Tensor,  # int32 [R * K / 8]
    scales: cute.Tensor,  # uint8: swizzled 128x4 buffer, or linear [R, K/16]
    out_words: cute.Tensor,  # int32 [R * K / 2] (bf16 pairs)
    rows: Int32,
    cols: Int32,
    swizzled: cutlass.Constexpr,
):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    blocks_per_row = cols // 16
    b = bidx * DEQUANT_THREADS + tidx
    if b < rows * blocks_per_row:
        row = b // blocks_per_row
        blk = b - row * blocks_per_row
        off = b
        if cutlass.const_expr(swizzled):
            col_tiles = (blocks_per_row + 3) // 4
            off = ((row // 128) * col_tiles + blk // 4) * 512 + (row % 32) * 16 + ((row % 128) // 32) * 4 + blk % 4
        s = ptx.e4m3_value(Int32(scales[off]))
        for w in cutlass.range_constexpr(2):
            word = Int32(packed_words[b * 2 + w])
            for j in cutlass.range_constexpr(4):
                lo = ptx.bits_f32(ptx.mul_rn(_e2m1_f32((word >> (8 * j)) & 15), s))
                hi = ptx.bits_f32(ptx.mul_rn(_e2m1_f32((word >> (8 * j + 4)) & 15), s))
                # exact in bf16: the low 16 bits of each product are zero
                out_words[b * 8 + w * 4 + j] = ((lo >> 16) & 0xFFFF) | (hi & -65536)


@cute.jit
def dequantize(
    packed_ptr: cute.Pointer,  # uint8 [R, K/2] as int32 words
    scale_ptr: cute.Pointer,  # uint8 scales
    out_ptr: cute.Pointer,  # bf16 [R, K] as int32 words
    rows: Int32,
    cols: Int32,
    stream: cuda.CUstream,
    swizzled: cutlass.Constexpr = True,
):
    n = rows * (cols // 16)
    packed = cute.make_tensor(packed_ptr, cute.make_layout(n * 2))
    scales = cute.make_tensor(scale_ptr, cute.make_layout(((rows + 127) // 128) * 128 * ((cols // 16 + 3) // 4) * 4))
    out = cute.make_tensor(out_ptr, cute.make_layout(n * 8))
    _dequant_kernel(packed, scales, out, rows, cols, swizzled).launch(
        grid=[(n + DEQUANT_THREADS - 1) // DEQUANT_THREADS, 1, 1], block=[DEQUANT_THREADS, 1, 1], stream=stream
    )


DEQUANT_ARG_TYPES = ((cutlass.Int32, 8), (cutlass.Uint8, 4), (cutlass.Int32, 16))


# --- bf16 WGMMA grouped GEMM ------------------------------------------------------------------------


@cute.kernel
def _gemm_kernel(
    tiled_mma: cute.TiledMma,
    tma_atom_a: cute.CopyAtom,
    mA: cute.Tensor,  # (P, K, 1) TMA view
    tma_atom_b: cute.CopyAtom,
    mB: cute.Tensor,  # (N, K, E) TMA view
    mC: cute.Tensor,  # bf16 (P, N)
    tile_expert: cute.Tensor,  # int32 [P / 128]; >= E past the last expert
    alpha: cute.Tensor,  # fp32 [E * G]
    groups: Int32,
    a_smem_staged: cute.ComposedLayout,
    b_smem_staged: cute.ComposedLayout,
):
    warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
    tidx, _, _ = cute.arch.thread_idx()
    pid_m, pid_n, _ = cute.arch.block_idx()
    n_experts = mB.shape[2]
    expert = Int32(tile_expert[pid_m])  # < 0: another launch's tile, left as it is
    live = (expert >= 0) & (expert < n_experts)
    e = cutlass.select_(live, expert, Int32(0))

    @cute.struct
    class Storage:
        bars: cute.struct.MemRange[cutlass.Int64, STAGES * 2]
        sA: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(a_smem_staged)], 1024]
        sB: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(b_smem_staged)], 1024]

    storage = cutlass.utils.SmemAllocator().allocate(Storage)
    sA = storage.sA.get_tensor(a_smem_staged.outer, swizzle=a_smem_staged.inner)
    sB = storage.sB.get_tensor(b_smem_staged.outer, swizzle=b_smem_staged.inner)
    a_bytes = cute.size_in_bytes(BFloat16, cute.slice_(a_smem_staged, (None, None, 0)))
    b_bytes = cute.size_in_bytes(BFloat16, cute.slice_(b_smem_staged, (None, None, 0)))
    mainloop = pipeline.PipelineTmaAsync.create(
        barrier_storage=storage.bars.data_ptr(),
        num_stages=STAGES,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, THREADS // 32),
        tx_count=a_bytes + b_bytes,
        cta_layout_vmnk=cute.make_layout((1, 1, 1, 1)),
    )

    tiler = (BM, BN, BK)
    gA = cute.local_tile(mA, tiler, (pid_m, pid_n, None, 0), proj=(1, None, 1))  # (BM, BK, k tiles)
    gB = cute.local_tile(mB, tiler, (pid_m, pid_n, None, e), proj=(None, 1, 1))  # (BN, BK, k tiles)
    gC = cute.local_tile(mC, (BM, BN), (pid_m, pid_n))  # (BM, BN)
    tAsA, tAgA = cpasync.tma_partition(
        tma_atom_a, 0, cute.make_layout(1), cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2)
    )
    tBsB, tBgB = cpasync.tma_partition(
        tma_atom_b, 0, cute.make_layout(1), cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2)
    )

    # A and B are read by the warpgroup as a whole (shared-memory descriptors); the accumulator is
    # spread over its threads, so C is partitioned per thread
    warpgroup_mma = tiled_mma.get_slice(0)
    tCrA = tiled_mma.make_fragment_A(warpgroup_mma.partition_A(sA))
    tCrB = tiled_mma.make_fragment_B(warpgroup_mma.partition_B(sB))
    thread_mma = tiled_mma.get_slice(tidx)
    tCgC = thread_mma.partition_C(gC)
    acc = cute.make_rmem_tensor(tCgC.shape, Float32)
    acc.fill(0.0)

    k_tiles = cute.size(gA, mode=[2])
    k_tiles = cutlass.select_(live, k_tiles, Int32(0))
    produce = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, STAGES)
    consume = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, STAGES)
    if warp_idx == 0:
        for _ in cutlass.range(cutlass.min(k_tiles, STAGES), unroll=1):
            mainloop.producer_acquire(produce)
            bar = mainloop.producer_get_barrier(produce)
            cute.copy(tma_atom_a, tAgA[(None, produce.count)], tAsA[(None, produce.index)], tma_bar_ptr=bar)
            cute.copy(tma_atom_b, tBgB[(None, produce.count)], tBsB[(None, produce.index)], tma_bar_ptr=bar)
            mainloop.producer_commit(produce)
            produce.advance()

    tiled_mma.set(warpgroup.Field.ACCUMULATE, True)
    k_blocks = cute.size(tCrA, mode=[2])
    for _ in cutlass.range(k_tiles, unroll=1):
        mainloop.consumer_wait(consume)
        warpgroup.fence()
        for kb in cutlass.range(k_blocks, unroll_full=True):
            coord = (None, None, kb, consume.index)
            cute.gemm(tiled_mma, acc, tCrA[coord], tCrB[coord], acc)
        warpgroup.commit_group()
        warpgroup.wait_group(0)
        mainloop.consumer_release(consume)
        consume.advance()
        if warp_idx == 0 and produce.count < k_tiles:
            mainloop.producer_acquire(produce)
            bar = mainloop.producer_get_barrier(produce)
            cute.copy(tma_atom_a, tAgA[(None, produce.count)], tAsA[(None, produce.index)], tma_bar_ptr=bar)
            cute.copy(tma_atom_b, tBgB[(None, produce.count)], tBsB[(None, produce.index)], tma_bar_ptr=bar)
            mainloop.producer_commit(produce)
            produce.advance()

    # epilogue: alpha of the column's group, bf16, straight to global memory (bounds-checked in N)
    n_cols = mC.shape[1]
    tCcC = thread_mma.partition_C(cute.make_identity_tensor((BM, BN)))
    for i in cutlass.range_constexpr(cute.size(acc)):
        col = pid_n * BN + tCcC[i][1]
        if col < n_cols and expert >= 0:
            a = Float32(alpha[e * groups + col * groups // n_cols])
            v = Float32(cutlass.select_(live, acc[i] * a, Float32(0.0)))
            tCgC[i] = v.to(BFloat16)


@cute.jit
def grouped_gemm(
    a_ptr: cute.Pointer,  # bf16 (P, K), K contiguous
    b_ptr: cute.Pointer,  # bf16 (E, N, K), K contiguous
    c_ptr: cute.Pointer,  # bf16 (P, N)
    tile_expert_ptr: cute.Pointer,  # int32 [P / 128]
    alpha_ptr: cute.Pointer,  # fp32 [E * G]
    rows: Int32,
    n: Int32,
    k: Int32,
    experts: Int32,
    groups: Int32,
    stream: cuda.CUstream,
):
    k8 = cute.assume(k, 8)  # TMA: 16-byte row strides
    a = cute.make_tensor(a_ptr, cute.make_layout((rows, k8, 1), stride=(k8, 1, rows * k8)))
    b = cute.make_tensor(b_ptr, cute.make_layout((n, k8, experts), stride=(k8, 1, n * k8)))
    c = cute.make_tensor(c_ptr, cute.make_layout((rows, n), stride=(n, 1)))
    tile_expert = cute.make_tensor(tile_expert_ptr, cute.make_layout((rows + BM - 1) // BM))
    alpha = cute.make_tensor(alpha_ptr, cute.make_layout(experts * groups))
    tiled_mma = sm90_utils.make_trivial_tiled_mma(
        BFloat16,
        BFloat16,
        warpgroup.OperandMajorMode.K,
        warpgroup.OperandMajorMode.K,
        Float32,
        (1, 1, 1),
        (64, BN),  # the WGMMA atom is 64 rows: one warpgroup covers BM = 128 in two
    )
    a_smem = sm90_utils.make_smem_layout_a(LayoutEnum.ROW_MAJOR, (BM, BN, BK), BFloat16, STAGES)
    b_smem = sm90_utils.make_smem_layout_b(LayoutEnum.ROW_MAJOR, (BM, BN, BK), BFloat16, STAGES)
    tma_a, tma_ta = cpasync.make_tiled_tma_atom(
        cpasync.CopyBulkTensorTileG2SOp(), a, cute.slice_(a_smem, (None, None, 0)), (BM, BK)
    )
    tma_b, tma_tb = cpasync.make_tiled_tma_atom(
        cpasync.CopyBulkTensorTileG2SOp(), b, cute.slice_(b_smem, (None, None, 0)), (BN, BK)
    )
    grid = (cute.ceil_div(c.shape[0], BM), cute.ceil_div(c.shape[1], BN), 1)
    _gemm_kernel(tiled_mma, tma_a, tma_ta, tma_b, tma_tb, c, tile_expert, alpha, groups, a_smem, b_smem).launch(
        grid=grid, block=[THREADS, 1, 1], stream=stream
    )


GEMM_ARG_TYPES = ((BFloat16, 16), (BFloat16, 16), (BFloat16, 16), (Int32, 4), (Float32, 4))
