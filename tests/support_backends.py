"""Backends with known bugs, to prove that the gates bite (loaded by file path, as a user's plugin would be)."""

import os
import time

import torch

from fp4check.kernels.contract import GroupedNVFP4, MoEOutput
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.kernels.emulated import moe as emu
from fp4check.kernels.emulated.faults import drop_rows_past
from fp4check.kernels.registry import Needs
from fp4check.kernels.triton.weight_tiles import tile_, untile_


class NoClamp(EmulatedBackend):
    """Seeds bug 25: plain silu(gate) * up, no swiglu_limit."""

    name = "no-clamp"

    @staticmethod
    def swiglu_clamp(gate_up, limit):
        return emu.swiglu_clamp(gate_up, None)


class DropsTokens(EmulatedBackend):
    """Seeds bug 22: each expert has room for 128 rows; the rest of its tokens are silently dropped."""

    name = "drops-tokens"
    shared_expert = None  # coarse runner only

    @staticmethod
    def moe_forward(x, w, token_ids, plan=None):
        if plan is None:
            ids, weights = emu.router(x, w, token_ids)
            plan = emu.plan_routes(ids, weights, w.expert_start, w.n_local)
        broken = drop_rows_past(plan, 128)
        out = emu.moe_forward(x, w, token_ids, broken)
        out.stages["plan"] = broken
        return out


class SharedW1Scale(EmulatedBackend):
    """Marlin-style: w3 dequantized with w1's global scale (spec §4.17)."""

    name = "shared-w1-scale"

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        g = b.global_scale.value
        if g.dim() > 1 and g.shape[-1] == 2:
            b = emu.GroupedNVFP4(b.packed, b.scales, type(b.global_scale)(g[:, :1].expand(-1, 2).contiguous()))
        return emu.grouped_gemm_nvfp4(a, b, offsets)


class ZeroGemm(EmulatedBackend):
    name = "zero-gemm"

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        return torch.zeros(a.rows, b.packed.shape[1], dtype=torch.bfloat16)


class NanGemm(EmulatedBackend):
    name = "nan-gemm"

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        out = emu.grouped_gemm_nvfp4(a, b, offsets)
        out[0, 0] = float("nan")
        return out


class TiledWeights(EmulatedBackend):
    """A runner that reorders its expert weights at load (the triton backend's layout, in place, on the CPU)
    and reads them back in its GEMM: the checks must hand it the prepared weights and restore them after."""

    name = "tiled-weights"

    @staticmethod
    def prepare_weights(b):
        tile_(b.packed, b.scales)
        return GroupedNVFP4(b.packed, b.scales, b.global_scale, "test-tiled")

    @staticmethod
    def restore_weights(prepared):
        untile_(prepared.packed, prepared.scales)

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        assert b.layout == "test-tiled", f"got weights laid out as {b.layout}"
        packed, scales = b.packed.clone(), b.scales.clone()
        untile_(packed, scales)
        return emu.grouped_gemm_nvfp4(a, GroupedNVFP4(packed, scales, b.global_scale), offsets)


class ForgetsItsLayout(TiledWeights):
    """Seeds-style load-time bug: the weights are reordered after loading, the GEMM reads them as rows."""

    name = "forgets-its-layout"

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        return emu.grouped_gemm_nvfp4(a, GroupedNVFP4(b.packed, b.scales, b.global_scale), offsets)


class ReadsPastTheWrite(EmulatedBackend):
    """A cache read one slot too far (the seeds' off-by-one page arithmetic): the last row of each written
    run comes from a slot nothing wrote, i.e. the pool's 0xFF poison, NaN."""

    name = "reads-past-the-write"

    @staticmethod
    def kv_cache_read(pages, block, slots):
        return kvc.kv_cache_read(pages, block, slots + 1)


class NeedsGpu(EmulatedBackend):
    name = "needs-gpu"
    needs = Needs(gpu=True, min_capability=(10, 0))


class AbortsAndHangs(EmulatedBackend):
    """Kills its process in the grouped GEMM and hangs in the activation."""

    name = "aborts-and-hangs"

    @staticmethod
    def grouped_gemm_nvfp4(a, b, offsets):
        os.abort()

    @staticmethod
    def swiglu_clamp(gate_up, limit):
        time.sleep(3600)


def coarse_only(x, w, token_ids, plan=None) -> MoEOutput:
    return emu.moe_forward(x, w, token_ids, plan)


class DefaultStreamCuteDSL:
    """The cutedsl backend with its kernels launched on the legacy default stream instead of torch's
    current one (the seed bug: invisible to a CUDA graph)."""

    def __new__(cls):
        from fp4check.kernels.cutedsl import CuteDSLBackend

        class _DefaultStream(CuteDSLBackend):
            name = "cutedsl-default-stream"

            @staticmethod
            def _stream():
                import cuda.bindings.driver as cuda

                return cuda.CUstream(0)

        return _DefaultStream()
