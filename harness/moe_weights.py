"""One layer's MoE weights from the checkpoint, prepared the way an NVFP4 runner receives them.

Routed experts stored as NVFP4 keep their bytes and global scales (w1 and w3 separately: the stacked
w13 carries a [E, 2] decode scale, like SGLang's w13_weight_scale_2). Experts stored otherwise (BF16,
MXFP4) are quantized with fp4check's NVFP4 codec as an NVFP4 export would (global decode scale =
amax/2688 per projection). Activation global scales, L1 and L2 separately: "checkpoint" takes the
experts' input scales as a serving runtime does (the max over the rank's experts, vLLM and TRT-LLM
alike); "warmup" measures the runtime amax of the batch itself (seeds bugs 5-6: L2's from the
SwiGLU output); "auto" is "checkpoint" when every expert has an input scale.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from fp4check.checkpoint import Checkpoint, Weight
from fp4check.errors import InputError
from fp4check.kernels.contract import GroupedNVFP4, MoEWeights
from fp4check.references.nvfp4 import DecodeScale, NVFP4Tensor, global_decode_scale, nvfp4_quantize

ACT_SCALE_MODES = ("auto", "checkpoint", "warmup")


def _as_nvfp4(w: Weight) -> NVFP4Tensor:
    if w.nvfp4 is not None:
        return w.nvfp4
    values = w.dequantize()
    return nvfp4_quantize(values, global_decode_scale(values.abs().amax()))


def _decode_value(q: NVFP4Tensor) -> torch.Tensor:
    return q.global_scale.to_decode().value.reshape(())


def _empty_stack(n: int, q: NVFP4Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed [n, groups*N, K/2], scales uint8 [n, groups*N, K/16], global decode [n, groups])."""
    rows = q.packed.shape[0] * groups
    dev = q.packed.device
    return (
        torch.empty(n, rows, q.packed.shape[1], dtype=torch.uint8, device=dev),
        torch.empty(n, rows, q.scales.shape[1], dtype=torch.uint8, device=dev),
        torch.empty(n, groups, dtype=torch.float32, device=dev),
    )


def _put(stack: tuple, i: int, rows: slice, q: NVFP4Tensor, group: int) -> None:
    stack[0][i, rows] = q.packed
    stack[1][i, rows] = q.scales.view(torch.uint8)
    stack[2][i, group] = _decode_value(q)


# below this many float32 bytes every expert's dequantized weights are kept once read
FLOAT_CACHE_BYTES = 1 << 30


class ExpertsFloat(Mapping):
    """expert id -> (w1, w3, w2) float32 for the reference, dequantized from the checkpoint as stored
    when asked. Small layers keep them once read; a Pro layer's 384 experts would take 101 GB in
    float32, so there one expert at a time is in memory."""

    def __init__(self, ckpt: Checkpoint, prefix: str, ids: range, float_bytes: int):
        self.ckpt, self.prefix, self.ids = ckpt, prefix, ids
        self._cache: dict | None = {} if float_bytes < FLOAT_CACHE_BYTES else None

    def __getitem__(self, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if e not in self.ids:
            raise KeyError(e)
        if self._cache is not None and e in self._cache:
            return self._cache[e]
        out = tuple(self.ckpt.weight(f"{self.prefix}experts.{e}.{x}").dequantize() for x in ("w1", "w3", "w2"))
        if self._cache is not None:
            self._cache[e] = out
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def load_moe_weights(ckpt: Checkpoint, layer: int, ep_size: int = 1, ep_rank: int = 0) -> MoEWeights:
    cfg = ckpt.config
    cfg.layer(layer)
    e_total = cfg.n_routed_experts
    if ep_size < 1 or e_total % ep_size:
        raise InputError(f"--ep-size {ep_size} does not divide the {e_total} routed experts")
    if not 0 <= ep_rank < ep_size:
        raise InputError(f"--ep-rank {ep_rank} is out of range for --ep-size {ep_size} (0..{ep_size - 1})")
    n_local = e_total // ep_size
    start = ep_rank * n_local
    p = f"layers.{layer}.ffn."
    routing = cfg.layers[layer].routing
    gate = ckpt.weight(f"{p}gate").dequantize()
    bias = ckpt.weight(f"{p}gate.bias").dequantize() if routing == "bias" else None
    tid2eid = ckpt.tensor(f"{p}gate.tid2eid") if routing == "hash" else None
    w13 = w2 = None
    in1, in2 = [], []
    # each expert copied into preallocated stacks: loading never holds the layer's packed bytes twice
    for i, e in enumerate(range(start, start + n_local)):
        w1, w3, w2w = (ckpt.weight(f"{p}experts.{e}.{x}") for x in ("w1", "w3", "w2"))
        q1, q3, q2 = _as_nvfp4(w1), _as_nvfp4(w3), _as_nvfp4(w2w)
        if w13 is None:
            w13, w2 = _empty_stack(n_local, q1, 2), _empty_stack(n_local, q2, 1)
        inter = q1.packed.shape[0]
        _put(w13, i, slice(0, inter), q1, 0)
        _put(w13, i, slice(inter, 2 * inter), q3, 1)
        _put(w2, i, slice(None), q2, 0)
        for w, sink in ((w1, in1), (w3, in1), (w2w, in2)):
            sink.append(w.input_scale.to_decode().value.reshape(()) if w.input_scale is not None else None)
        del w1, w3, w2w, q1, q3, q2
    dim, inter = w13[0].shape[-1] * 2, w2[0].shape[-1] * 2
    experts_float = ExpertsFloat(ckpt, p, range(start, start + n_local), n_local * 3 * inter * dim * 4)
    shared = {x: ckpt.weight(f"{p}shared_experts.{x}") for x in ("w1", "w2", "w3")}
    have_scales = all(s is not None for s in in1 + in2)
    weights = MoEWeights(
        layer=layer,
        gate=gate,
        bias=bias,
        tid2eid=tid2eid,
        w13=GroupedNVFP4(w13[0], w13[1].view(torch.float8_e4m3fn), DecodeScale(w13[2])),
        w2=GroupedNVFP4(w2[0], w2[1].view(torch.float8_e4m3fn), DecodeScale(w2[2])),
        input_scale_l1=DecodeScale(torch.stack(in1).max()) if have_scales else DecodeScale(torch.tensor(float("nan"))),
        input_scale_l2=DecodeScale(torch.stack(in2).max()) if have_scales else DecodeScale(torch.tensor(float("nan"))),
        shared=shared,
        topk=cfg.num_experts_per_tok,
        routed_scaling_factor=cfg.routed_scaling_factor,
        swiglu_limit=cfg.swiglu_limit,
        n_experts=e_total,
        expert_start=start,
        scoring_func=cfg.scoring_func,
        extra={
            "experts_float": experts_float,
            "shared_float": tuple(shared[x].dequantize() for x in ("w1", "w3", "w2")),
            "checkpoint_scales": have_scales,
        },
    )
    return weights


def set_activation_scales(w: MoEWeights, mode: str, x: torch.Tensor, plan) -> str:
    """Fill w.input_scale_l1/_l2 for the mode; returns the mode used ("checkpoint" or "warmup")."""
    from fp4check.kernels.emulated.moe import gather_rows, grouped_gemm_nvfp4, quantize_activation, swiglu_clamp

    if mode not in ACT_SCALE_MODES:
        raise InputError(f"unknown activation-scale mode {mode!r}: use {', '.join(ACT_SCALE_MODES)}")
    if mode == "auto":
        mode = "checkpoint" if w.extra["checkpoint_scales"] else "warmup"
    if mode == "checkpoint":
        if not w.extra["checkpoint_scales"]:
            raise InputError("this checkpoint's experts carry no input scales: use --act-scales warmup")
        return mode
    w.input_scale_l1 = global_decode_scale(x.float().abs().amax())
    a1 = quantize_activation(gather_rows(x, plan), w.input_scale_l1.to_encode())
    act = swiglu_clamp(grouped_gemm_nvfp4(a1, w.w13, plan.offsets), w.swiglu_limit)
    w.input_scale_l2 = global_decode_scale(act.float().abs().amax())
    return mode
