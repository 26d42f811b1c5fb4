"""The CUDA-graph check: capture a backend's op in a CUDA graph, replay it with new inputs copied into the
static buffers, and compare every replay with an eager call on the same inputs.

What fails, with the reason (the seed bugs of a runtime that captures the model in a graph):
- a host sync during capture (`.item()`, `.cpu()`, `.tolist()`, a Python int from a GPU tensor, dynamic
  slicing with GPU scalars): capture raises; the message names it;
- a replay that differs from eager on new inputs: work the graph did not capture (a kernel launched on
  another stream, a result computed on the host at capture time and baked in, a buffer allocated or
  sized at capture time);
- an op that raises in eager mode on GPU tensors.
Every op is called once eagerly before capture so that JIT compilation (Triton, CuTeDSL) happens
outside the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fp4check.kernels.placement import to_device

SYNC_HINTS = ("capturing", "capture", "not permitted", "cudaErrorStreamCapture", "synchron")


@dataclass
class GraphResult:
    op: str
    status: str  # pass | fail | skip
    reason: str
    replays: int = 0
    max_abs_diff: float = 0.0


def _cuda(obj):
    return to_device(obj, "cuda")


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    if hasattr(out, "__dataclass_fields__"):
        return [t for f in out.__dataclass_fields__ for t in _flat(getattr(out, f))]
    return []


def _why(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}"
    if any(h.lower() in text.lower() for h in SYNC_HINTS):
        return f"capture-unsafe: a host sync or host-side work while capturing ({text.splitlines()[0][:160]})"
    return f"capture failed: {text.splitlines()[0][:200]}"


def check_op(name: str, fn: Callable, static: list[torch.Tensor], fresh: list[list[torch.Tensor]]) -> GraphResult:
    """fn(*static) captured; for each input set in `fresh`, copy it into `static`, replay, compare with eager."""
    try:
        fn(*static)
        torch.cuda.synchronize()
    except Exception as err:
        return GraphResult(name, "fail", f"eager call on GPU tensors raised {type(err).__name__}: {err}")
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            captured = fn(*static)
    except Exception as err:
        torch.cuda.synchronize()
        return GraphResult(name, "fail", _why(err))
    worst = 0.0
    for i, inputs in enumerate(fresh):
        for s, x in zip(static, inputs, strict=True):
            s.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        eager = fn(*inputs)
        torch.cuda.synchronize()
        for got, want in zip(_flat(captured), _flat(eager), strict=True):
            if got.shape != want.shape:
                return GraphResult(name, "fail", f"replay {i}: shape {tuple(got.shape)} vs eager {tuple(want.shape)}")
            diff = (got.float() - want.float()).abs().nan_to_num(nan=float("inf"))
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    if worst > 0:
        return GraphResult(
            name,
            "fail",
            "replay differs from eager on new inputs: work outside the graph (another stream, "
            "host-side values baked in at capture)",
            len(fresh),
            worst,
        )
    return GraphResult(name, "pass", "replays equal eager", len(fresh), 0.0)


def moe_graph_checks(backend, ckpt, layer: int, tokens: int, seed: int) -> list[GraphResult]:
    """Each MoE fine op the backend has, and its moe_forward, captured on the layer's real weights."""
    from fp4check.moe_check import MoECheck, backend_weights, prepare

    truth = prepare(ckpt, MoECheck("graph", ("out",), layer, "natural", tokens, seed))
    with backend_weights(backend, _cuda(truth.weights)) as w:  # as the backend lays them out at load
        return _graph_cases(backend, truth, w, seed)


def _graph_cases(backend, truth, w, seed: int) -> list[GraphResult]:
    from fp4check.kernels.emulated import moe as emu
    from fp4check.kernels.registry import provides

    plan, e = _cuda(truth.plan), truth.emulated
    g = torch.Generator().manual_seed(seed + 1)

    def like(t: torch.Tensor) -> torch.Tensor:
        if t.dtype in (torch.bfloat16, torch.float32):
            return (torch.randn(t.shape, generator=g) * t.float().std().cpu()).to(t.dtype).cuda()
        return t.cuda()

    x = truth.x.cuda()
    rows = emu.gather_rows(truth.x, truth.plan).cuda()
    cases = []
    if provides(backend, "nvfp4_quantize"):
        enc = w.input_scale_l1.to_encode()
        cases.append(("nvfp4_quantize", lambda r: backend.nvfp4_quantize(r, enc), [rows]))
    if provides(backend, "grouped_gemm_nvfp4"):
        a = _cuda(e["quant_l1"])

        def gemm(packed, scales):
            return backend.grouped_gemm_nvfp4(
                type(a)(packed, scales, a.global_scale, a.rows, a.cols), w.w13, plan.offsets
            )

        cases.append(("grouped_gemm_nvfp4", gemm, [a.packed, a.scales]))
    if provides(backend, "swiglu_clamp"):
        cases.append(("swiglu_clamp", lambda h: backend.swiglu_clamp(h, w.swiglu_limit), [e["l1_rows"].cuda()]))
    if provides(backend, "moe_forward"):
        ids = truth.token_ids.cuda()
        # routing inside the graph, as a runtime captures its MoE layer: the plan must not need the host
        cases.append(("moe_forward", lambda xx: backend.moe_forward(xx, w, ids, None).out, [x]))
    out = []
    for name, fn, static in cases:
        fresh = []
        for _ in range(3):
            fresh.append(
                [like(s) if s.dtype != torch.uint8 and s.dtype != torch.float8_e4m3fn else s.clone() for s in static]
            )
        if name == "grouped_gemm_nvfp4":  # new activations: requantize new rows
            enc_cpu = truth.weights.input_scale_l1.to_encode()
            new = [emu.quantize_activation(like(rows).cpu(), enc_cpu) for _ in range(3)]
            fresh = [[q.packed.cuda(), q.scales.cuda()] for q in new]
        out.append(check_op(name, fn, [s.clone() for s in static], fresh))
    return out
