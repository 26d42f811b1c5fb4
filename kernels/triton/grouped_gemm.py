"""Grouped NVFP4 GEMM in Triton for GPUs without FP4 tensor cores (SM90; it builds for SM100 too,
`bench/compile_targets.py`, but has not run there): rows sorted by expert and padded to 128 (offsets),
e2m1 decoded in the kernel and multiplied by its e4m3 block scale into bf16 (exact: at most 6
significant bits), bf16 tensor-core MMA with fp32 accumulation, and alpha = S_dec(a) * S_dec(b)[expert,
column group] in the epilogue (w1 and w3 halves of w13 may carry different global scales). Equal to the
emulated backend up to fp32 accumulation order.

Two kernels share this module's front end (`gemm_args`: A's decoded copy and live flags): `_gemm_kernel`
here, `tl.dot`, for any GPU Triton targets and either weight layout; and on SM90 with tiled weights the
warp-specialized Gluon kernel of `grouped_gemm_sm90` with its tile plan, taking 31-47% less time at the
Pro shapes, which `grouped_gemm` picks there (kernel="auto").

Why the `tl.dot` kernel is shaped this way (MoE decode shapes: ~64 rows per expert, so every weight
element is decoded for few rows):
- Tokens are the MMA's M side and the decoded weight tile is staged through shared memory. The other
  orientation ("swap AB", the decoded tile fed to wgmma from registers) and A decoded from packed NVFP4
  inside the GEMM both measured slower at every tile with `tl.dot` on the H100
  (bench/results/h100_gemm_tiles_probe_20261122d.txt); swap AB needs the warp specialization of the
  Gluon kernel to pay off.
- The weight decode is about 3 instructions per element: inline PTX turns 4 packed bytes into 8 bf16
  with a byte permute, shifts and masks (e2m1 bits placed as bf16 subnormal/normal bits, i.e. the value
  x 2^-126) and one bf16x2 multiply by s_b x 2^118; the 2^-8 left over is given back in the epilogue
  (powers of two: exact). The values come out as two bf16 tiles, the low nibbles (even K) and the high
  nibbles (odd K); the GEMM sums over K in any order, so A is stored once split the same way
  (`_prep_a_kernel`, which decodes A to bf16 for every N tile), and the two tiles are joined into one
  [BN, 128] operand for one K = 128 dot per step.
- 64-row token tiles with no non-zero A scale (the padding of experts with <= 64 rows) skip the K loop,
  as do tiles past offsets[-1] (a plan sized before routing); both write acc x alpha = 0. The flags (one
  per 16 rows, `_live_kernel`) come from A's scales, the tile -> expert map from offsets, both on the
  GPU: no host sync, so the launch can be captured in a CUDA graph.
- Weights reordered once at load so that each 64-row group's K step is one 4 KB block (`weight_tiles`,
  TILED; the backend's `prepare_weights`) take 23-28% less time on the H100 than row-major ones, which
  still work (TILED=False).
- What bounds it. With 128-row tiles (Nsight Compute on the H100, same file), one CTA of 8 warps per SM
  runs every step's load, decode, shared-memory store and MMA in sequence, its warps 43-48% of their
  cycles at CTA barriers, the tensor pipe half busy on padding rows. The MoE forward's padding rows are
  zero, so with 64-row tiles, which skip them, the kernel reaches 43-45% of the matmul rate at the Pro
  shapes (uniform routing; bench/results/h100_triton_bench_20261122e.csv). Overlapping the decode with
  the MMA needs producer and consumer warps, which `tl.dot` cannot express: see `grouped_gemm_sm90`.
`DECODE_ASM=False` decodes with plain Triton ops into the same planes: that path runs in Triton's CPU
interpreter, which has no inline assembly, and the GPU test holds the two paths bit-equal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4check.kernels.gpu_backend import tile_experts
from fp4check.kernels.triton.nvfp4_quant import swizzled_offsets
from fp4check.kernels.triton.tile_plan import BLOCK, CHUNK
from fp4check.kernels.triton.weight_tiles import K_STEP, ROWS, tileable

KC = tl.constexpr(K_STEP)  # the K step; A's nibble-split order repeats every KC
GROUP = tl.constexpr(ROWS)  # rows of a tiled weight group
TWO_POW_118 = tl.constexpr(2.0**118)  # s_b x 2^118 x (e2m1 x 2^-126) = e2m1 x s_b x 2^-8, a normal bf16 for every code
EPILOGUE_GAIN = tl.constexpr(256.0)  # gives back the 2^-8
BLOCK_FLAGS = tl.constexpr(BLOCK // CHUNK)  # live flags of a 128-row block, one per 16 rows
# (K columns, warps, rows) of a `_prep_a_kernel` program for A's copy for the wgmma kernel and for the
# tl.dot one; K columns a multiple of K_STEP (the K order repeats every step). On the H100 at the Pro
# shapes with skewed routing, 2048 columns and 8 warps took 316 us (L1) and 189 us (L2) where one program
# over all K with 4 warps took 444 and 204-211 (bench/results/h100_gemm_prefetch_probe_20261122h.txt);
# for the wgmma kernel's tile plan, programs of 16 rows (one live-flag chunk: a 16-row tile's block is
# decoded for its 16 rows only) and 4 warps took 263 and 128 us where 64 rows took 316 and 162
# (h100_gemm_parts_probe_20261122i.txt); the tl.dot kernel reads whole 128-row blocks
PREP = {"wgmma": (2048, 4, 16), "tl.dot": (2048, 8, 64)}

# 4 packed bytes ($4) and their 4 scales ($5, $6: bf16x2) -> bf16x2 registers: low nibbles of bytes
# (0, 1) and (2, 3), then the high nibbles. Each output element comes from the input byte and scale at its
# own position, so the result does not depend on how Triton groups a thread's elements into registers.
# prmt spreads the bytes to u = (b0, b1) and v = (b2, b3) in 16-bit halves; a nibble's 3 magnitude bits
# go to bf16 bits 6..8, its sign bit to 15.
_DECODE_PTX = tl.constexpr("""{
.reg .b32 u, v, m, s;
prmt.b32 u, $4, 0, 0x4140;
prmt.b32 v, $4, 0, 0x4342;
shl.b32 m, u, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, u, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 $0, m, $5;
shl.b32 m, v, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, v, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 $1, m, $6;
shl.b32 m, u, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, u, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 $2, m, $5;
shl.b32 m, v, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, v, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 $3, m, $6;
}""")


@triton.jit
def _e2m1(code):
    """bf16 value of e2m1 codes (int32 0..15), built from bits with integer ops (no exp2 on the SFU):
    0.5 is 0x3F00; magnitude codes 2..7 are 2^(e-1) * (1 + m/2), e = mag >> 1, m = mag & 1."""
    mag = code & 7
    normal = (((mag >> 1) + 126) << 7) | ((mag & 1) << 6)
    bits = tl.where(mag < 2, mag * 0x3F00, normal) | ((code & 8) << 12)
    return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _per_byte(s, rows: tl.constexpr):
    """Block scales [rows, KC/16] -> one per packed byte [rows, KC/2] (8 bytes to a block)."""
    return tl.reshape(tl.broadcast_to(s[:, :, None], (rows, KC // 16, 8)), (rows, KC // 2))


@triton.jit
def _decode_ops(packed, scale):
    """Plain-op decode: packed bytes, scale fp32 broadcast -> (low nibbles, high nibbles) as bf16 planes."""
    p = packed.to(tl.int32)
    lo = (_e2m1(p & 15).to(tl.float32) * scale).to(tl.bfloat16)
    hi = (_e2m1(p >> 4).to(tl.float32) * scale).to(tl.bfloat16)
    return lo, hi


@triton.jit
def _live_kernel(as_ptr, live_ptr, col_tiles, CT: tl.constexpr):
    """The live flag of each 16-row chunk of a 128-row block: any non-zero scale byte (a row of zero
    scales decodes to zeros), over CT of the block's 512-byte swizzle tiles (`swizzled_offsets`: row
    a + 32b of the block is word 4a + b of a tile, so word w belongs to chunk w // 64 + 2 (w % 4))."""
    ct = tl.program_id(1) * CT + tl.arange(0, CT)
    words = tl.load(
        as_ptr.to(tl.pointer_type(tl.int32)) + (tl.program_id(0) * col_tiles + ct[:, None]) * 128 + tl.arange(0, 128),
        mask=ct[:, None] < col_tiles,
        other=0,
    )
    f = tl.max(tl.max(tl.reshape((words != 0).to(tl.int32), (CT, 2, 16, 4)), axis=0), axis=1)  # [w//64, w%4]
    flags = tl.reshape(tl.permute(f, (1, 0)), (BLOCK_FLAGS,))
    tl.atomic_max(live_ptr + tl.program_id(0) * BLOCK_FLAGS + tl.arange(0, BLOCK_FLAGS), flags)


@triton.jit
def _span(flags, MIN_SPAN: tl.constexpr):
    """Rows of 128-row blocks the GEMM reads, from their chunk flags [n, 8]: the smallest of 16, 32, 64,
    128 (at least MIN_SPAN) that reaches past the last live chunk, 0 for none (`tile_plan`'s rule)."""
    last = tl.max(tl.where(flags > 0, tl.arange(0, BLOCK_FLAGS)[None, :], -1), axis=1)
    span = tl.where(last < 1, 16, tl.where(last < 2, 32, tl.where(last < 4, 64, 128)))
    return tl.where(last < 0, 0, tl.maximum(span, MIN_SPAN))


@triton.jit
def _prep_a_kernel(
    a_ptr,
    as_ptr,
    out_ptr,
    live_ptr,
    K,
    K_SPAN,
    col_tiles,
    MIN_SPAN: tl.constexpr,
    WGMMA_ORDER: tl.constexpr,
    R: tl.constexpr,
):
    """A [R rows, K_SPAN columns] decoded in the K order the GEMM's weight decode produces (per KC step):
    bf16 in the nibble-split order here (the even columns, then the odd ones), or f16 in grouped_gemm_sm90's
    (column 16b + 8h + 2t + p holds k = 32t + 4b + 2p + h). Only the rows the GEMM reads (`_span` of the
    block's live flags, from `_live_kernel`): the expert padding past them is neither read nor written."""
    r = tl.program_id(0) * R + tl.arange(0, R)
    block = tl.program_id(0) * R // 128
    flags = tl.load(live_ptr + block * BLOCK_FLAGS + tl.arange(0, BLOCK_FLAGS)[None, :])
    span = _span(flags, MIN_SPAN)  # [1]
    read = r[:, None] % 128 < span[None, :]
    a_rows = a_ptr + r[:, None].to(tl.int64) * (K // 2) + tl.arange(0, KC // 2)[None, :]
    out_rows = out_ptr + r[:, None].to(tl.int64) * K
    # one program R rows and K_SPAN columns: the padding's programs (most of them under skewed
    # routing) read their flags and stop, where a program per K step each paid a launch
    k_first = tl.program_id(1) * K_SPAN
    k_end = tl.where(tl.max(read.to(tl.int32)) > 0, tl.minimum(k_first + K_SPAN, K), 0)
    for k0 in range(k_first, k_end, KC):
        p = tl.load(a_rows + k0 // 2, mask=read, other=0)
        s_bytes = tl.load(as_ptr + swizzled_offsets(r, k0 // 16 + tl.arange(0, KC // 16), col_tiles), mask=read)
        lo, hi = _decode_ops(p, _per_byte(s_bytes.to(tl.float8e4nv, bitcast=True).to(tl.float32), R))
        if WGMMA_ORDER:  # (row, byte 16t + 2b + p, nibble h) -> column 16b + 8h + 2t + p
            w = tl.permute(tl.reshape(tl.join(lo, hi), (R, 4, 8, 2, 2)), (0, 2, 4, 1, 3))
            tl.store(out_rows + k0 + tl.arange(0, KC)[None, :], tl.reshape(w, (R, KC)).to(tl.float16), mask=read)
        else:
            base = out_rows + k0 + tl.arange(0, KC // 2)[None, :]
            tl.store(base, lo, mask=read)
            tl.store(base + KC // 2, hi, mask=read)


# Tiles measured at the Pro shapes on the H100 (bench/results/h100_gemm_tiles_probe_20261122d.txt): the
# first three were the best with random padding rows; with the zero padding the MoE forward gives (the
# bench since h100_triton_bench_20261122e.csv) the autotuner picks the 64-row tiles, which skip it.
@triton.autotune(
    configs=[
        triton.Config({"BN": 256, "BT": 128}, num_warps=8, num_stages=3),
        triton.Config({"BN": 128, "BT": 128}, num_warps=4, num_stages=2),
        triton.Config({"BN": 128, "BT": 128}, num_warps=8, num_stages=2),
        triton.Config({"BN": 128, "BT": 128}, num_warps=4, num_stages=4),
        triton.Config({"BN": 128, "BT": 64}, num_warps=4, num_stages=3),
        triton.Config({"BN": 128, "BT": 64}, num_warps=4, num_stages=2),
    ],
    key=["N", "K", "TILED"],  # the best tile differs between the two weight layouts
)
@triton.jit
def _gemm_kernel(
    a16_ptr,
    live_ptr,
    b_ptr,
    bs_ptr,
    bg_ptr,
    ag_ptr,
    tile_expert_ptr,
    offsets_ptr,
    n_experts,
    out_ptr,
    N,
    K,
    groups,
    n_per_group,
    BN: tl.constexpr,
    BT: tl.constexpr,
    DECODE_ASM: tl.constexpr,
    TILED: tl.constexpr,
):
    pid_n = tl.program_id(0)  # N tiles vary fastest: neighbours share the expert's A tile in L2
    pid_t = tl.program_id(1)
    e = tl.load(tile_expert_ptr + (pid_t * BT) // 128)
    live = tl.max(tl.load(live_ptr + pid_t * (BT // 16) + tl.arange(0, BT // 16)), axis=0)
    live = (live > 0) & (pid_t * BT < tl.load(offsets_ptr + n_experts))
    k_end = tl.where(live, K, 0)
    n = pid_n * BN + tl.arange(0, BN)
    t = pid_t * BT + tl.arange(0, BT)
    nmask = n[:, None] < N
    b_rows = b_ptr + e.to(tl.int64) * N * (K // 2)
    s_rows = bs_ptr + e.to(tl.int64) * N * (K // 16)
    if TILED:  # weight_tiles: per GROUP-row group [K/KC, GROUP, KC/2] codes and [K/KC, GROUP, KC/16] scales
        group = (n[:, None] // GROUP).to(tl.int64) * (K // KC)
        b_rows += group * (GROUP * KC // 2) + (n[:, None] % GROUP) * (KC // 2)
        s_rows += group * (GROUP * KC // 16) + (n[:, None] % GROUP) * (KC // 16)
        b_step: tl.constexpr = GROUP * KC // 2
        s_step: tl.constexpr = GROUP * KC // 16
    else:
        b_rows += n[:, None].to(tl.int64) * (K // 2)
        s_rows += n[:, None].to(tl.int64) * (K // 16)
        b_step: tl.constexpr = KC // 2
        s_step: tl.constexpr = KC // 16
    a_rows = a16_ptr + t[:, None].to(tl.int64) * K + tl.arange(0, KC)[None, :]
    bcols = tl.arange(0, KC // 2)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, k_end, KC):
        p = tl.load(b_rows + (k0 // KC) * b_step + bcols[None, :], mask=nmask, other=0)
        s = tl.load(s_rows + (k0 // KC) * s_step + tl.arange(0, KC // 16)[None, :], mask=nmask, other=0)
        s = s.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # [BN, KC/16]: scale work before the broadcast
        if DECODE_ASM:
            s = _per_byte((s * TWO_POW_118).to(tl.bfloat16), BN)
            w_lo, w_hi = tl.inline_asm_elementwise(
                _DECODE_PTX, "=r,=r,=r,=r,r,r,r", [p, s], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4
            )
        else:
            w_lo, w_hi = _decode_ops(p, _per_byte(s * (1.0 / EPILOGUE_GAIN), BN))
        # [BN, KC] in A's nibble-split order; the join folds into the shared-memory store the MMA needs
        # anyway, and one K = 128 dot waits for the tensor cores once a step instead of twice
        w = tl.reshape(tl.permute(tl.join(w_lo, w_hi), (0, 2, 1)), (BN, KC))
        acc = tl.dot(tl.load(a_rows + k0), tl.trans(w), acc)
    group = n // n_per_group
    alpha = tl.load(ag_ptr) * tl.load(bg_ptr + e * groups + group, mask=n < N, other=0.0) * EPILOGUE_GAIN
    out = (acc * alpha[None, :]).to(tl.bfloat16)
    tl.store(out_ptr + t[:, None].to(tl.int64) * N + n[None, :], out, mask=n[None, :] < N)


_last_kernel = ""


def grouped_gemm(
    a_packed: torch.Tensor,
    a_scales: torch.Tensor,
    a_global_decode: torch.Tensor,
    b_packed: torch.Tensor,
    b_scales: torch.Tensor,
    b_global_decode: torch.Tensor,
    offsets: torch.Tensor,
    decode_asm: bool = True,
    tiled: bool = False,
    kernel: str = "auto",
) -> torch.Tensor:
    """bf16 [P, N]. a_packed uint8 [P, K/2], a_scales uint8 swizzled, b_packed uint8 [E, N, K/2], b_scales
    uint8 [E, N, K/16] (row-major, or reordered by `weight_tiles.tile_` where tiled), b_global_decode fp32
    [E, G], offsets int64 [E+1] (multiples of 128, offsets[-1] = P). Rows past offsets[-1] are written as
    zeros. kernel: "wgmma" (grouped_gemm_sm90: SM90, tiled weights), "tl.dot" (this module's, any GPU),
    or "auto" (wgmma where it runs)."""
    wgmma = _wgmma(kernel, tiled and decode_asm, b_packed)
    args, out = gemm_args(
        a_packed, a_scales, a_global_decode, b_packed, b_scales, b_global_decode, offsets, tiled, wgmma
    )
    rows, n = out.shape
    global _last_kernel
    _last_kernel = "wgmma" if wgmma else "tl.dot"
    if wgmma:
        from fp4check.kernels.triton import grouped_gemm_sm90

        grouped_gemm_sm90.launch(args)
    else:
        _gemm_kernel[lambda meta: (triton.cdiv(n, meta["BN"]), rows // meta["BT"])](
            *args, DECODE_ASM=decode_asm, TILED=tiled
        )
    return out


def wgmma_fits(n: int, k: int, device: torch.device) -> bool:
    """Whether the SM90 wgmma kernel (grouped_gemm_sm90) takes tiled weights [E, n, k] on this device: an
    SM90 GPU, a Triton with Gluon, n a multiple of 128."""
    try:
        from fp4check.kernels.triton.grouped_gemm_sm90 import fits
    except ImportError:  # a Triton without Gluon
        return False
    return fits(n, k, device)


def _wgmma(kernel: str, eligible: bool, b_packed: torch.Tensor) -> bool:
    """Whether grouped_gemm runs the SM90 wgmma kernel: it reads tiled weights with the inline-PTX decode."""
    if kernel not in ("auto", "wgmma", "tl.dot"):
        raise ValueError(f"kernel is auto, wgmma or tl.dot, got {kernel!r}")
    if kernel == "tl.dot":
        return False
    _, n, half_k = b_packed.shape
    ok = eligible and wgmma_fits(n, half_k * 2, b_packed.device)
    if kernel == "wgmma" and not ok:
        raise ValueError(
            f"the wgmma GEMM needs an SM90 GPU, Triton's Gluon, tiled weights and N a multiple of 128, got N={n}"
        )
    return ok


def gemm_args(
    a_packed, a_scales, a_global_decode, b_packed, b_scales, b_global_decode, offsets, tiled, wgmma=False
) -> tuple:
    """(the GEMM kernels' positional arguments, the output among them) for `grouped_gemm`'s inputs, after
    `_prep_a_kernel` made A's decoded copy (in the dtype and K order of the kernel that reads it) and live flags
    (bench/probe_gemm_configs.py launches the kernels at chosen tiles with these)."""
    rows, half_k = a_packed.shape
    k = half_k * 2
    e, n, _ = b_packed.shape
    if k % K_STEP or rows % 128:
        raise ValueError(f"the Triton grouped GEMM takes K a multiple of {K_STEP} and rows of 128, got {rows}x{k}")
    if tiled and not tileable(n, k):
        raise ValueError(f"tiled weights need N a multiple of {ROWS}, got {n}")
    groups = b_global_decode.shape[-1] if b_global_decode.dim() > 1 else 1
    out = torch.empty(rows, n, dtype=torch.bfloat16, device=a_packed.device)
    cp = -(-(k // 16) // 4) * 4
    # the wgmma kernel multiplies in f16 (A's values, e2m1 x e4m3, are exact in f16 as in bf16)
    a16 = torch.empty(rows, k, dtype=torch.float16 if wgmma else torch.bfloat16, device=a_packed.device)
    live = torch.zeros(rows // 16, dtype=torch.int32, device=a_packed.device)
    _live_kernel[(rows // 128, triton.cdiv(cp // 4, 16))](a_scales, live, cp // 4, CT=16, num_warps=4)
    # the tl.dot kernel reads whole blocks (its tiles are 64 or 128 rows), the wgmma kernel its tile plan's
    span = 16 if wgmma else 128
    k_span, warps, prep_rows = PREP["wgmma" if wgmma else "tl.dot"]
    _prep_a_kernel[(rows // prep_rows, triton.cdiv(k, k_span))](
        a_packed, a_scales, a16, live, k, k_span, cp // 4, span, wgmma, prep_rows, num_warps=warps
    )
    args = (
        a16,
        live,
        b_packed.contiguous(),
        b_scales.contiguous(),
        b_global_decode.reshape(e, groups).to(torch.float32).contiguous(),
        a_global_decode.reshape(1).to(torch.float32),
        tile_experts(offsets, rows).clamp(max=offsets.numel() - 2),  # past-end tiles: a valid expert to read
        offsets,
        offsets.numel() - 1,
        out,
        n,
        k,
        groups,
        n // groups,
    )
    return args, out


def tuned_config() -> str:
    """The tile of the GEMM kernel that ran last in this process, autotuned (tl.dot) or fixed (wgmma):
    bench reports it next to the timing."""
    if _last_kernel == "wgmma":
        from fp4check.kernels.triton import grouped_gemm_sm90

        return "wgmma: " + grouped_gemm_sm90.last_config
    cfg = getattr(_gemm_kernel, "best_config", None)
    if cfg is None:
        return ""
    return ", ".join(f"{k}={v}" for k, v in {**cfg.kwargs, "warps": cfg.num_warps, "stages": cfg.num_stages}.items())
