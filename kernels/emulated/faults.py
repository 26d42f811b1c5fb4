"""Fault injection: the emulated backend with one or more known bugs switched on (`--inject NAME[,NAME]`).

Each fault reproduces a bug class of the seed log (shared/seeds/002...) or of the spec's known bugs
(shared/spec/deepseek_v4.md §4) on the MoE path; `fp4check selftest` runs every fault through the checks
and shows which stage catches it. Faults that live in a runner's plumbing (its row plan, its scale
assembly) act in the backend's own pipeline, so they show in propagated rows; faults in an op show in
isolated rows too.
"""

from __future__ import annotations

import torch

from fp4check.kernels.contract import GroupedNVFP4, MoEOutput, NVFP4Activation, RoutePlan
from fp4check.kernels.emulated import EmulatedBackend
from fp4check.kernels.emulated import attention as emu_attn
from fp4check.kernels.emulated import attn_faults as af
from fp4check.kernels.emulated import kv_cache as kvc
from fp4check.kernels.emulated import moe as emu
from fp4check.references.e2m1 import pack_e2m1, unpack_e2m1
from fp4check.references.nvfp4 import NVFP4_BLOCK, DecodeScale
from fp4check.references.swizzle import swizzle_128x4, unswizzle_128x4

# name -> (what it does, the bug it models, the scenario that exposes it)
FAULTS: dict[str, tuple[str, str, str]] = {
    "no-swiglu-clamp": ("silu(gate) * up without swiglu_limit", "seeds 002 bug 25", "natural"),
    "searchsorted-boundary": (
        "the first row of each expert is computed with the previous expert's weights (searchsorted right=False)",
        "seeds 002 bug 2",
        "uniform",
    ),
    "drop-tokens-past-128": (
        "an expert keeps 128 rows; the rest of its tokens are dropped",
        "seeds 002 bug 22",
        "skewed",
    ),
    "fixed-128-scale-slots": (
        "activation scales assembled at e*128 while the GEMM reads them at the real padded offsets",
        "seeds 002 bug 14",
        "skewed",
    ),
    "offsets-leading-zero": (
        "expert offsets passed with the leading 0: each segment gets the next expert's weights",
        "seeds 002 bug 4",
        "natural",
    ),
    "global-ids-as-local": (
        "global expert ids used as local ones on an expert-parallel rank",
        "seeds 002 bugs 8, 13",
        "ep-rank-1",
    ),
    "shared-l1-l2-scale": ("one activation global scale for L1 and L2", "seeds 002 bugs 6-7", "natural"),
    "global-swizzle": (
        "scales swizzled over the compact (unpadded) rows, read at padded offsets",
        "seeds 002 bug 1",
        "natural",
    ),
    "tiny-input-scale": (
        "input scale 3977x too small and block scales cast without saturation (NaN past 448, torch 2.11's cast)",
        "seeds 004",
        "natural",
    ),
    "unclamped-scale-cast": (
        "block scales cast to e4m3 without saturation (NaN past 448, torch 2.11's cast)",
        "spec nvfp4 §1.2, seeds 004",
        "natural",
    ),
    "nibble-swap": ("element 2i packed in the high nibble", "spec nvfp4 §1.7", "natural"),
    "biased-routing-weights": ("router weights from score + bias instead of the score", "spec §4.5", "natural"),
    "no-routed-scaling": ("routing weights not multiplied by routed_scaling_factor", "spec §4.6", "natural"),
    # attention: the scenario "attn:TYPE" runs the attention half of the first layer of that type;
    # "chain" runs the layers in sequence (a fault that lives between layers)
    "rope-rotate-half": (
        "RoPE on rotate-half pairs (i, i+32) instead of the interleaved (2i, 2i+1)",
        "seeds 000 (RoPE slice bug), spec §2.6",
        "attn:C4A",
    ),
    "no-inverse-rope": (
        "the attention output's rope dims not rotated back before wo_a",
        "spec §4 bug 10 (Primus #928)",
        "attn:C4A",
    ),
    "sink-ignored": ("attention softmax without the sink in the denominator", "spec §2.5 step 7", "attn:SWA"),
    "yarn-on-swa": (
        "SWA layers rotated with the compressed layers' theta and YaRN",
        "spec §4 bug 9 (vLLM #54815, sglang #30920)",
        "attn:SWA",
    ),
    "csa-overlap-shift": (
        "CSA entry w pools the Ca half of window w-2 instead of w-1",
        "spec §4 bug 11 (compressor boundary)",
        "attn:C4A",
    ),
    "kv-scale-not-pow2": (
        "KV no-rope dims quantized with amax/448 but stored with the power-of-two exponent",
        "seeds 000 (fp8 dequant fix), spec §2.13",
        "attn:C4A",
    ),
    "stale-entry-cache": (
        "one compressed-entry cache reused by every layer without being rewritten",
        "seeds 002 bug 21 (shared buffers), seeds 000 (zeroed buffers)",
        "chain",
    ),
}
TINY_INPUT_SCALE_FACTOR = 3977.6
# Faults that only bite together with a defective checkpoint: selftest, which runs clean checkpoints,
# covers unclamped-scale-cast through tiny-input-scale (the same cast with the seeds' input scale).
NEEDS_A_DEFECT = {"unclamped-scale-cast"}


def drop_rows_past(plan: RoutePlan, limit: int) -> RoutePlan:
    """The plan of a runner that keeps `limit` rows per expert and silently drops the rest (seeds bug 22)."""
    row_of = plan.row_of.clone()
    first = plan.offsets[:-1][plan.local.clamp(min=0)]
    row_of[(row_of - first >= limit) & (row_of >= 0)] = -1
    token_of = torch.full_like(plan.token_of, -1)
    live = row_of >= 0
    token_of[row_of[live]] = live.nonzero()[:, 0]
    return RoutePlan(plan.ids, plan.weights, plan.local, plan.counts, plan.offsets, row_of, token_of)


class FaultyEmulated(EmulatedBackend):
    """The emulated backend with faults switched on."""

    def __init__(self, faults: list[str]):
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            from fp4check.errors import InputError

            raise InputError(f"unknown fault {unknown[0]!r}: use one of {', '.join(FAULTS)}")
        self.faults = set(faults)
        self.name = "emulated+" + ",".join(sorted(faults))
        self._plan: RoutePlan | None = None
        self._stale = af.StaleEntryCache()

    # --- routing and plan --------------------------------------------------------------------------

    def router(self, x, w, token_ids, forced_ids=None):
        ids, weights = emu.router(x, w, token_ids, forced_ids)
        if {"biased-routing-weights", "no-routed-scaling"} & self.faults:
            from fp4check.references.moe import router_scores

            _, scores = router_scores(x, w.gate, w.scoring_func)
            picked = scores.gather(1, ids)
            if "biased-routing-weights" in self.faults and w.bias is not None:
                picked = picked + w.bias[ids]
            scale = 1.0 if "no-routed-scaling" in self.faults else w.routed_scaling_factor
            weights = picked / picked.sum(-1, keepdim=True) * scale
        return ids, weights

    def plan_routes(self, ids, weights, start, n_local):
        if "global-ids-as-local" in self.faults:
            start = 0
        plan = emu.plan_routes(ids, weights, start, n_local)
        if "drop-tokens-past-128" in self.faults:
            plan = drop_rows_past(plan, 128)
        return plan

    # --- fine ops ------------------------------------------------------------------------------------

    def nvfp4_quantize(self, x, global_scale):
        a = emu.quantize_activation(x, global_scale)
        plan, rows, cols = self._plan, a.rows, a.cols // NVFP4_BLOCK
        if "nibble-swap" in self.faults:
            codes = unpack_e2m1(a.packed)
            a.packed = pack_e2m1(torch.stack([codes[:, 1::2], codes[:, 0::2]], -1).reshape(codes.shape))
        if {"tiny-input-scale", "unclamped-scale-cast"} & self.faults:
            # the unclamped cast of torch 2.11: block scales past 448 become the NaN code
            factor = TINY_INPUT_SCALE_FACTOR if "tiny-input-scale" in self.faults else 1.0
            enc = global_scale.to_encode().value * factor
            amax_b = x.float().abs().view(rows, cols, NVFP4_BLOCK).amax(-1)
            over = (amax_b / 6.0) * enc > 464.0
            lin = unswizzle_128x4(a.scales, rows, cols).view(torch.uint8).clone()
            lin[over] = 0x7F
            a.scales = swizzle_128x4(lin.view(torch.float8_e4m3fn))
        if plan is not None and rows == plan.rows and {"fixed-128-scale-slots", "global-swizzle"} & self.faults:
            lin = unswizzle_128x4(a.scales, rows, cols)
            live = plan.token_of >= 0
            wrong = torch.zeros_like(lin.view(torch.uint8))
            if "fixed-128-scale-slots" in self.faults:
                expert_of_row = torch.searchsorted(plan.offsets[1:], torch.arange(rows), right=True)
                pos = torch.arange(rows) - plan.offsets[expert_of_row]
                keep = live & (pos < 128)
                slot = expert_of_row[keep] * 128 + pos[keep]
                ok = slot < rows
                wrong[slot[ok]] = lin.view(torch.uint8)[keep][ok]
            else:  # compact rows in expert order, then read as if they were padded
                compact = lin.view(torch.uint8)[live]
                wrong[: compact.shape[0]] = compact
            a.scales = swizzle_128x4(wrong.view(torch.float8_e4m3fn))
        return a

    def grouped_gemm_nvfp4(self, a: NVFP4Activation, b: GroupedNVFP4, offsets):
        if "searchsorted-boundary" in self.faults:
            out = torch.zeros(a.rows, b.packed.shape[1], dtype=torch.bfloat16)
            expert = torch.searchsorted(offsets[1:], torch.arange(a.rows), right=False).clamp(max=len(offsets) - 2)
            for e in expert.unique().tolist():
                rows = (expert == e).nonzero()[:, 0]
                seg = emu.GroupedNVFP4(
                    b.packed[e : e + 1], b.scales[e : e + 1], DecodeScale(b.global_scale.value[e : e + 1])
                )
                sub = NVFP4Activation(
                    a.packed[rows],
                    swizzle_128x4(unswizzle_128x4(a.scales, a.rows, a.cols // NVFP4_BLOCK)[rows]),
                    a.global_scale,
                    len(rows),
                    a.cols,
                )
                out[rows] = emu.grouped_gemm_nvfp4(sub, seg, torch.tensor([0, len(rows)]))
            return out
        if "offsets-leading-zero" in self.faults:
            shifted = torch.cat([offsets[:1], offsets[:-1]])  # segment e is [off[e-1], off[e]): one expert early
            return emu.grouped_gemm_nvfp4(a, b, shifted)
        return emu.grouped_gemm_nvfp4(a, b, offsets)

    def swiglu_clamp(self, gate_up, limit):
        return emu.swiglu_clamp(gate_up, None if "no-swiglu-clamp" in self.faults else limit)

    # --- the whole block -----------------------------------------------------------------------------

    def moe_forward(self, x, w, token_ids, plan=None) -> MoEOutput:
        import copy

        w2 = copy.copy(w)
        if "shared-l1-l2-scale" in self.faults:
            w2.input_scale_l2 = w.input_scale_l1
        if plan is None:
            ids, weights = self.router(x, w, token_ids)
            plan = self.plan_routes(ids, weights, w.expert_start, w.n_local)
        elif {"global-ids-as-local", "drop-tokens-past-128"} & self.faults:
            plan = self.plan_routes(plan.ids, plan.weights, w.expert_start, w.n_local)
        self._plan = plan
        try:
            return emu.moe_forward(x, w2, token_ids, plan, ops=self)
        finally:
            self._plan = None

    # --- attention -----------------------------------------------------------------------------------

    def _rope(self, w):
        """(rotation, frequencies) this faulty runner uses for layer w."""
        rope = af.rope_rotate_half if "rope-rotate-half" in self.faults else emu_attn.apply_rope
        yarn = "yarn-on-swa" in self.faults and w.params.ratio == 0
        return rope, (w.extra["compress_freqs"] if yarn else None)

    def attn_q(self, x, w, positions):
        rope, freqs = self._rope(w)
        return emu_attn.attn_q(x, w, positions, rope=rope, freqs=freqs)

    def attn_kv(self, x, w, positions):
        rope, freqs = self._rope(w)
        return emu_attn.attn_kv(x, w, positions, rope=rope, freqs=freqs)

    def attn_out(self, core, w, positions):
        rope, freqs = self._rope(w)
        return emu_attn.attn_out(
            core, w, positions, rope=None if "no-inverse-rope" in self.faults else rope, freqs=freqs
        )

    def compressor(self, x, w):
        if "csa-overlap-shift" in self.faults and w.params.ratio == 4:
            entries = af.compressor_overlap_shifted(x, w)
        else:
            entries = emu_attn.compressor(x, w)
        return self._stale(entries) if "stale-entry-cache" in self.faults else entries

    def kv_cache_write(self, pages, block, slots, kv):
        if "kv-scale-not-pow2" in self.faults:
            return af.kv_write_linear_scale(pages, block, slots, kv)
        return kvc.kv_cache_write(pages, block, slots, kv)

    def paged_attention(self, q, pages, block, slots, sink):
        if "sink-ignored" in self.faults:
            sink = torch.full_like(sink, float("-inf"))
        return kvc.paged_attention(q, pages, block, slots, sink)
