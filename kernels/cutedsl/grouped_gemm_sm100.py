"""NVFP4 block-scaled grouped GEMM for SM100 (B200) in the CUTLASS Python DSL: the contract of
torch.nn.functional.scaled_grouped_mm for the MoE forward (2D activations x 3D expert weights): e2m1 x
e2m1 with e4m3 block-16 scales in the 128x4 swizzle, fp32 accumulation in tensor memory, and per-expert
global scales applied as alpha = S_dec(a) * S_dec(b)[expert, column group] in the epilogue.

The MMA is tcgen05's block-scaled kind::mxf4nvf4 (MmaMXF4NVF4Op, 128 x 128 x 64 per instruction, four per
256-wide K tile); TMA brings A, B and both scale tiles into shared memory, the scales are copied on into
tensor memory, one warp issues the MMAs, all four warps read the accumulator back. Rows are sorted by
expert and padded to 128, so each 128-row tile has one expert (`tile_expert`, computed on the GPU from
the offsets): the expert picks the L slice of B and of its scales; tiles past offsets[-1] write zeros.

Requirements (checked by the caller): K a multiple of 256, each column group's width (N / G) a multiple
of 128 (the whole tile shares one alpha). Compiled in CI for sm_100a with fake pointers and its PTX
checked for the block-scaled MMA; its numeric check runs only where an SM100 GPU is present.
"""

from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.blackwell_helpers as sm100_utils
import cutlass.utils.blockscaled_layout as blockscaled
from cutlass import BFloat16, Float32, Int32
from cutlass.cute.nvgpu import cpasync, tcgen05

AB = cutlass.Float4E2M1FN
SF = cutlass.Float8E4M3FN
SF_VEC = 16
MMA_MN = (128, 128)
MMA_K = 64
TILE = (128, 128, 256)  # four MMAs per K tile
STAGES = 4
THREADS = 128
TMEM_COLS = 512


@cute.kernel
def _kernel(
    tiled_mma: cute.TiledMma,
    tma_a: cute.CopyAtom,
    mA: cute.Tensor,
    tma_b: cute.CopyAtom,
    mB: cute.Tensor,
    tma_sfa: cute.CopyAtom,
    mSFA: cute.Tensor,
    tma_sfb: cute.CopyAtom,
    mSFB: cute.Tensor,
    mC: cute.Tensor,  # bf16 (P, N, 1)
    tile_expert: cute.Tensor,  # int32 [P / 128]
    alpha: cute.Tensor,  # fp32 [E * G]
    groups: Int32,
    a_smem: cute.ComposedLayout,
    b_smem: cute.ComposedLayout,
    sfa_smem: cute.Layout,
    sfb_smem: cute.Layout,
    tx_bytes: cutlass.Constexpr,
):
    warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
    tidx, _, _ = cute.arch.thread_idx()
    pid_m, pid_n, _ = cute.arch.block_idx()
    n_experts = mB.shape[2]
    expert = Int32(tile_expert[pid_m])
    n_cols = mC.shape[1]

    if expert >= 0 and expert < n_experts:

        @cute.struct
        class Storage:
            ab_bars: cute.struct.MemRange[cutlass.Int64, STAGES * 2]
            acc_bars: cute.struct.MemRange[cutlass.Int64, 2]
            tmem_holder: Int32

        smem = utils.SmemAllocator()
        storage = smem.allocate(Storage)
        sA = smem.allocate_tensor(element_type=AB, layout=a_smem.outer, byte_alignment=128, swizzle=a_smem.inner)
        sB = smem.allocate_tensor(element_type=AB, layout=b_smem.outer, byte_alignment=128, swizzle=b_smem.inner)
        sSFA = smem.allocate_tensor(element_type=SF, layout=sfa_smem, byte_alignment=128)
        sSFB = smem.allocate_tensor(element_type=SF, layout=sfb_smem, byte_alignment=128)

        one_thread = pipeline.CooperativeGroup(pipeline.Agent.Thread)
        loads, mmas = pipeline.PipelineTmaUmma.create(
            barrier_storage=storage.ab_bars.data_ptr(),
            num_stages=STAGES,
            producer_group=one_thread,
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
            tx_count=tx_bytes,
        ).make_participants()
        acc_ready, acc_read = pipeline.PipelineUmmaAsync.create(
            barrier_storage=storage.acc_bars.data_ptr(),
            num_stages=1,
            producer_group=one_thread,
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, THREADS),
        ).make_participants()

        # this CTA's tiles: rows of A (L = 0), the expert's slice of B and of both scale tensors
        a_tile = cute.slice_(TILE, (None, 0, None))
        b_tile = cute.slice_(TILE, (0, None, None))
        gA = cute.local_tile(mA, a_tile, (pid_m, None, 0))  # (bM, bK, k tiles)
        gB = cute.local_tile(mB, b_tile, (pid_n, None, expert))
        gSFA = cute.local_tile(mSFA, a_tile, (pid_m, None, 0))
        gSFB = cute.local_tile(mSFB, b_tile, (pid_n, None, expert))
        gC = cute.local_tile(mC, cute.slice_(TILE, (None, None, 0)), (pid_m, pid_n, 0))
        k_tiles = cute.size(gA, mode=[2])

        thr_mma = tiled_mma.get_slice(0)
        tCgA = thr_mma.partition_A(gA)
        tCgB = thr_mma.partition_B(gB)
        tCgSFA = thr_mma.partition_A(gSFA)
        tCgSFB = thr_mma.partition_B(gSFB)
        tCgC = thr_mma.partition_C(gC)

        def tma_view(atom, s, g):
            return cpasync.tma_partition(
                atom, 0, cute.make_layout(1), cute.group_modes(s, 0, 3), cute.group_modes(g, 0, 3)
            )

        tAsA, tAgA = tma_view(tma_a, sA, tCgA)
        tBsB, tBgB = tma_view(tma_b, sB, tCgB)
        tAsSFA, tAgSFA = tma_view(tma_sfa, sSFA, tCgSFA)
        tBsSFB, tBgSFB = tma_view(tma_sfb, sSFB, tCgSFB)
        tAsSFA, tAgSFA = cute.filter_zeros(tAsSFA), cute.filter_zeros(tAgSFA)
        tBsSFB, tBgSFB = cute.filter_zeros(tBsSFB), cute.filter_zeros(tBgSFB)

        tCrA = tiled_mma.make_fragment_A(sA)
        tCrB = tiled_mma.make_fragment_B(sB)
        acc_fake = tiled_mma.make_fragment_C(tiled_mma.partition_shape_C(TILE[:2]))

        # tensor memory: the accumulator, then the A and B scales behind it
        tmem = utils.TmemAllocator(
            storage.tmem_holder.ptr, barrier_for_retrieve=pipeline.NamedBarrier(barrier_id=1, num_threads=THREADS)
        )
        tmem.allocate(TMEM_COLS)
        tmem.wait_for_alloc()
        acc_ptr = tmem.retrieve_ptr(Float32)
        tAcc = cute.make_tensor(acc_ptr, acc_fake.layout)
        sfa_ptr = cute.recast_ptr(acc_ptr + tcgen05.find_tmem_tensor_col_offset(tAcc), dtype=SF)
        tSFA = cute.make_tensor(
            sfa_ptr,
            blockscaled.make_tmem_layout_sfa(tiled_mma, TILE, SF_VEC, cute.slice_(sfa_smem, (None, None, None, 0))),
        )
        sfb_ptr = cute.recast_ptr(
            acc_ptr + tcgen05.find_tmem_tensor_col_offset(tAcc) + tcgen05.find_tmem_tensor_col_offset(tSFA), dtype=SF
        )
        tSFB = cute.make_tensor(
            sfb_ptr,
            blockscaled.make_tmem_layout_sfb(tiled_mma, TILE, SF_VEC, cute.slice_(sfb_smem, (None, None, None, 0))),
        )

        s2t_atom = cute.make_copy_atom(tcgen05.Cp4x32x128bOp(tcgen05.CtaGroup.ONE), SF)

        def s2t(s_sf, t_sf):
            t_compact = cute.filter_zeros(t_sf)
            copy = tcgen05.make_s2t_copy(s2t_atom, t_compact)
            thr = copy.get_slice(0)
            src = tcgen05.get_s2t_smem_desc_tensor(copy, thr.partition_S(cute.filter_zeros(s_sf)))
            return copy, src, thr.partition_D(t_compact)

        copy_sfa, sfa_src, sfa_dst = s2t(sSFA, tSFA)
        copy_sfb, sfb_src, sfb_dst = s2t(sSFB, tSFB)

        if warp_idx == 0:
            acc_slot = acc_ready.acquire_and_advance()
            tiled_mma.set(tcgen05.Field.ACCUMULATE, False)
            for _ in cutlass.range(k_tiles, prefetch_stages=STAGES - 2):
                empty = loads.acquire_and_advance()
                cute.copy(tma_a, tAgA[(None, empty.count)], tAsA[(None, empty.index)], tma_bar_ptr=empty.barrier)
                cute.copy(tma_b, tBgB[(None, empty.count)], tBsB[(None, empty.index)], tma_bar_ptr=empty.barrier)
                cute.copy(tma_sfa, tAgSFA[(None, empty.count)], tAsSFA[(None, empty.index)], tma_bar_ptr=empty.barrier)
                cute.copy(tma_sfb, tBgSFB[(None, empty.count)], tBsSFB[(None, empty.index)], tma_bar_ptr=empty.barrier)
                full = mmas.wait_and_advance()
                stage = (None, None, None, None, full.index)
                cute.copy(copy_sfa, sfa_src[stage], sfa_dst)
                cute.copy(copy_sfb, sfb_src[stage], sfb_dst)
                for kb in cutlass.range(cute.size(tCrA, mode=[2]), unroll_full=True):
                    tiled_mma.set(tcgen05.Field.SFA, tSFA[(None, None, kb)].iterator)
                    tiled_mma.set(tcgen05.Field.SFB, tSFB[(None, None, kb)].iterator)
                    cute.gemm(
                        tiled_mma, tAcc, tCrA[(None, None, kb, full.index)], tCrB[(None, None, kb, full.index)], tAcc
                    )
                    tiled_mma.set(tcgen05.Field.ACCUMULATE, True)
                full.release()
            acc_slot.commit()

        # epilogue: each thread one accumulator row, alpha of the tile's column group, bf16 out
        t2r = tcgen05.make_tmem_copy(
            cute.make_copy_atom(tcgen05.Ld32x32bOp(tcgen05.Repetition.x128, tcgen05.Pack.NONE), Float32), tAcc
        )
        thr_t2r = t2r.get_slice(tidx)
        tTR_acc = thr_t2r.partition_S(tAcc)
        tTR_gC = thr_t2r.partition_D(tCgC)
        r_acc = cute.make_rmem_tensor(tTR_gC.shape, Float32)
        r_c = cute.make_rmem_tensor(tTR_gC.shape, BFloat16)
        tmem.relinquish_alloc_permit()
        ready = acc_read.wait_and_advance()
        cute.copy(t2r, tTR_acc, r_acc)
        a = Float32(alpha[expert * groups + (pid_n * TILE[1]) * groups // n_cols])
        r_c.store((r_acc.load() * a).to(BFloat16))
        cute.copy(cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), BFloat16), r_c, tTR_gC)
        ready.release()
        cute.arch.barrier()
        tmem.free(acc_ptr)
    else:
        # past the last expert: zeros, as the contract's padded tail
        row = pid_m * TILE[0] + tidx
        for j in cutlass.range(TILE[1], unroll=8):
            col = pid_n * TILE[1] + j
            if col < n_cols and expert >= n_experts:
                mC[(row, col, 0)] = BFloat16(0.0)


@cute.jit
def grouped_gemm(
    a_ptr: cute.Pointer,  # e2m1 (P, K) packed, K contiguous
    b_ptr: cute.Pointer,  # e2m1 (E, N, K)
    sfa_ptr: cute.Pointer,  # e4m3, 128x4 swizzle of (P, K/16)
    sfb_ptr: cute.Pointer,  # e4m3, 128x4 swizzle of each expert's (N, K/16)
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
    k32 = cute.assume(k, 32)
    a = cute.make_tensor(a_ptr, cute.make_layout((rows, k32, 1), stride=(k32, 1, rows * k32)))
    b = cute.make_tensor(b_ptr, cute.make_layout((n, k32, experts), stride=(k32, 1, n * k32)))
    c = cute.make_tensor(c_ptr, cute.make_layout((rows, n, 1), stride=(n, 1, rows * n)))
    sfa = cute.make_tensor(sfa_ptr, blockscaled.tile_atom_to_shape_SF(a.shape, SF_VEC))
    sfb = cute.make_tensor(sfb_ptr, blockscaled.tile_atom_to_shape_SF(b.shape, SF_VEC))
    tile_expert = cute.make_tensor(tile_expert_ptr, cute.make_layout((rows + TILE[0] - 1) // TILE[0]))
    alpha = cute.make_tensor(alpha_ptr, cute.make_layout(experts * groups))

    tiled_mma = cute.make_tiled_mma(
        tcgen05.MmaMXF4NVF4Op(SF, (*MMA_MN, MMA_K), tcgen05.CtaGroup.ONE, tcgen05.OperandSource.SMEM)
    )
    cluster = cute.tiled_divide(cute.make_layout((1, 1, 1)), (tiled_mma.thr_id.shape,))
    a_smem = sm100_utils.make_smem_layout_a(tiled_mma, TILE, AB, STAGES)
    b_smem = sm100_utils.make_smem_layout_b(tiled_mma, TILE, AB, STAGES)
    sfa_smem = blockscaled.make_smem_layout_sfa(tiled_mma, TILE, SF_VEC, STAGES)
    sfb_smem = blockscaled.make_smem_layout_sfb(tiled_mma, TILE, SF_VEC, STAGES)

    def one(layout):
        return cute.slice_(layout, (None, None, None, 0))

    g2s = cpasync.CopyBulkTensorTileG2SOp(tcgen05.CtaGroup.ONE)
    tma_a, ta = cute.nvgpu.make_tiled_tma_atom_A(g2s, a, one(a_smem), TILE, tiled_mma, cluster.shape)
    tma_b, tb = cute.nvgpu.make_tiled_tma_atom_B(g2s, b, one(b_smem), TILE, tiled_mma, cluster.shape)
    tma_sfa, tsfa = cute.nvgpu.make_tiled_tma_atom_A(
        g2s, sfa, one(sfa_smem), TILE, tiled_mma, cluster.shape, internal_type=cutlass.Int16
    )
    tma_sfb, tsfb = cute.nvgpu.make_tiled_tma_atom_B(
        g2s, sfb, one(sfb_smem), TILE, tiled_mma, cluster.shape, internal_type=cutlass.Int16
    )
    tx_bytes = (
        cute.size_in_bytes(AB, one(a_smem))
        + cute.size_in_bytes(AB, one(b_smem))
        + cute.size_in_bytes(SF, one(sfa_smem))
        + cute.size_in_bytes(SF, one(sfb_smem))
    )
    grid = (cute.ceil_div(rows, TILE[0]), cute.ceil_div(n, TILE[1]), 1)
    _kernel(
        tiled_mma,
        tma_a,
        ta,
        tma_b,
        tb,
        tma_sfa,
        tsfa,
        tma_sfb,
        tsfb,
        c,
        tile_expert,
        alpha,
        groups,
        a_smem,
        b_smem,
        sfa_smem,
        sfb_smem,
        tx_bytes,
    ).launch(grid=grid, block=[THREADS, 1, 1], cluster=(1, 1, 1), stream=stream)


ARG_TYPES = ((AB, 32), (AB, 32), (SF, 16), (SF, 16), (BFloat16, 16), (Int32, 4), (Float32, 4))
