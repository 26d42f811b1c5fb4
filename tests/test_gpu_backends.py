"""The GPU backends (`triton`, `cutedsl`) on a GPU: the quantizer code for code against the exact codec
(ties included), the grouped GEMM against the emulated pipeline, the checks end to end, CUDA-graph
replay. Each backend's tests are skipped cleanly, with the reason, where its needs are not met (CI: no
GPU). On an SM100 GPU the cutedsl backend runs its SM100 kernels (hardware e2m1, tcgen05 GEMM) through
the same tests."""

import pytest
import torch
from conftest import run_cli

from fp4check.kernels.contract import GroupedNVFP4
from fp4check.kernels.registry import load_backend

GPU_BACKENDS = ("triton", "cutedsl")


@pytest.fixture(params=GPU_BACKENDS)
def backend(request):
    be = load_backend(request.param)
    unmet = be.needs.unmet()
    if unmet:
        pytest.skip(f"{request.param} backend: {unmet}")
    return be


def _adversarial(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed rows, plus blocks built on the e2m1 midpoints (ties), a zero block, -0.0, a NaN block,
    an Inf, tiny and huge magnitudes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.exp(2 * torch.randn(rows, 1, generator=g))
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    x[0, :16] = torch.cat([mids, -mids])  # amax 6: block scale exact, every midpoint a tie
    x[1, :16] = 0.0
    x[1, 16:32] = -0.0
    x[2, 3] = float("nan")
    x[3, 40] = float("inf")
    x[4, :] *= 1e-30
    x[5, :] *= 1e4
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("rows", [8, 200, 384])
def test_quantize_is_code_for_code_the_exact_codec(backend, rows):
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import global_encode_scale

    x = _adversarial(rows, 1024)
    g = global_encode_scale(x.float().nan_to_num(posinf=0).abs().amax())
    want = quantize_activation(x, g)
    got = backend.nvfp4_quantize(x, g)
    assert torch.equal(got.scales.view(torch.uint8), want.scales.view(torch.uint8))
    assert torch.equal(got.packed, want.packed)


def test_quantize_rounds_exact_ties_half_to_even(backend):
    """Global scale 1 and a block of amax 6: block scale 1.0 exactly, so every midpoint is an exact tie."""
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import EncodeScale, nvfp4_quantize, rounding_ties

    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    x = torch.cat([mids, -mids]).repeat(8, 4).to(torch.bfloat16)  # [8, 64]
    g = EncodeScale(torch.tensor(1.0))
    assert rounding_ties(x.float(), nvfp4_quantize(x.float(), g).scales, g)[:, :7].all()
    got, want = backend.nvfp4_quantize(x, g), quantize_activation(x, g)
    assert torch.equal(got.packed, want.packed)
    assert torch.equal(got.scales.view(torch.uint8), want.scales.view(torch.uint8))


def _moe_operands(experts: int, n: int, k: int, counts: list[int], groups: int, seed: int = 0):
    from fp4check.kernels.contract import GroupedNVFP4
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import DecodeScale, global_encode_scale, nvfp4_quantize

    g = torch.Generator().manual_seed(seed)
    padded = [-(-c // 128) * 128 for c in counts]
    offsets = torch.tensor([0] + padded).cumsum(0)
    rows = int(offsets[-1])
    x = torch.zeros(rows, k)
    for e, c in enumerate(counts):
        x[int(offsets[e]) : int(offsets[e]) + c] = torch.randn(c, k, generator=g)
    x = x.to(torch.bfloat16)
    a = quantize_activation(x, global_encode_scale(x.float().abs().amax()))
    packed, scales, globals_ = [], [], []
    for _ in range(experts):
        w = torch.randn(n, k, generator=g) * 0.05
        parts = [nvfp4_quantize(h) for h in w.chunk(groups)]
        packed.append(torch.cat([p.packed for p in parts]))
        scales.append(torch.cat([p.scales.view(torch.uint8) for p in parts]))
        globals_.append(torch.stack([p.global_scale.to_decode().value.reshape(()) for p in parts]))
    b = GroupedNVFP4(
        torch.stack(packed), torch.stack(scales).view(torch.float8_e4m3fn), DecodeScale(torch.stack(globals_))
    )
    return a, b, offsets


@pytest.mark.parametrize("groups", [1, 2])
def test_grouped_gemm_conforms_to_the_emulated_pipeline(backend, groups):
    from fp4check.kernels.emulated.moe import grouped_gemm_nvfp4
    from fp4check.metrics import compare

    a, b, offsets = _moe_operands(6, 256, 512, [130, 0, 5, 128, 300, 1], groups)
    want = grouped_gemm_nvfp4(a, b, offsets)
    got = backend.grouped_gemm_nvfp4(a, b, offsets)
    m = compare(got.float(), want.float())
    assert m["cosine"] > 0.99999 and m["nan_out"] == 0
    # accumulation-order noise only: within a couple of bf16 ulps of the emulated result
    assert torch.allclose(got.float(), want.float(), rtol=2**-6, atol=1e-3)


def test_grouped_gemm_writes_zeros_past_the_last_expert(backend):
    """A plan sized before routing has rows past offsets[-1]: their tiles skip the K loop and write 0."""
    from fp4check.kernels.contract import NVFP4Activation
    from fp4check.kernels.emulated.moe import grouped_gemm_nvfp4
    from fp4check.references.swizzle import swizzle_128x4, unswizzle_128x4

    a, b, offsets = _moe_operands(3, 256, 512, [100, 0, 20], 2)
    extra = 256
    packed = torch.cat([a.packed, torch.full((extra, a.packed.shape[1]), 0x77, dtype=torch.uint8)])
    lin = unswizzle_128x4(a.scales, a.rows, a.cols // 16).view(torch.uint8)
    lin = torch.cat([lin, torch.full((extra, lin.shape[1]), 0x38, dtype=torch.uint8)])  # non-zero garbage rows
    big = NVFP4Activation(packed, swizzle_128x4(lin.view(torch.float8_e4m3fn)), a.global_scale, a.rows + extra, a.cols)
    got = backend.grouped_gemm_nvfp4(big, b, offsets)
    assert got.shape[0] == a.rows + extra and not got[a.rows :].any()
    want = grouped_gemm_nvfp4(a, b, offsets)
    assert torch.allclose(got[: a.rows].float(), want.float(), rtol=2**-6, atol=1e-3)


def test_moe_forward_on_the_gpu_matches_the_emulated_block(backend, tiny_modelopt):
    """The whole block on the GPU (routing, a static plan, the kernels, the shared expert) against the
    emulated block on the CPU."""
    from fp4check.checkpoint import Checkpoint
    from fp4check.kernels.emulated import moe as emu
    from fp4check.metrics import compare
    from fp4check.moe_check import MoECheck, prepare

    truth = prepare(Checkpoint(tiny_modelopt), MoECheck("t", ("out",), 1, "natural", 256, 0))
    want = emu.moe_forward(truth.x, truth.weights, truth.token_ids)
    got = backend.moe_forward(truth.x, truth.weights, truth.token_ids)
    assert got.out.device.type == "cpu" and got.stages["plan"].rows > want.stages["plan"].rows  # static plan
    m = compare(got.out.float(), want.out.float())
    assert m["cosine"] > 0.9999 and m["nan_out"] == 0


def test_graph_check_captures_the_moe_forward(backend, tiny_modelopt):
    import json

    r = run_cli("graph", "--backend", backend.name, "--checkpoint", str(tiny_modelopt), "--json")
    res = {x["op"]: x for x in json.loads(r.stdout)}
    assert res["moe_forward"]["status"] == "pass", res["moe_forward"]["reason"]
    assert r.exit_code == 0, r.stdout


def test_kernel_checks_pass_on_the_backend(backend, tiny_modelopt):
    r = run_cli("kernel", "quant", "l1", "l2", "--backend", backend.name, "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 0, r.stdout[-3000:] + r.stderr
    r = run_cli(
        "layer", "--type", "C4A", "--only", "moe", "--backend", backend.name, "--checkpoint", str(tiny_modelopt)
    )
    assert r.exit_code == 0, r.stdout[-3000:] + r.stderr


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_raw_kernels_replay_in_a_cuda_graph(name):
    """The kernels themselves (GPU tensors in, no contract wrapper) captured and replayed."""
    be = load_backend(name)
    if be.needs.unmet():
        pytest.skip(f"{name} backend: {be.needs.unmet()}")
    import importlib

    if name == "triton":
        grouped_gemm = importlib.import_module("fp4check.kernels.triton.grouped_gemm").grouped_gemm
        nvfp4_quantize = importlib.import_module("fp4check.kernels.triton.nvfp4_quant").nvfp4_quantize
    else:
        mod = importlib.import_module("fp4check.kernels.cutedsl")
        grouped_gemm, nvfp4_quantize = mod.grouped_gemm, mod.nvfp4_quantize

    a, b, offsets = _moe_operands(4, 256, 512, [128, 64, 0, 200], 2)
    x = torch.randn(a.rows, 512, device="cuda").to(torch.bfloat16)
    enc = torch.tensor([100.0], device="cuda")
    bp, bs, bg = b.packed.cuda(), b.scales.view(torch.uint8).cuda(), b.global_scale.value.cuda()
    off, dec = offsets.cuda(), (1 / enc)

    def step():
        p, s = nvfp4_quantize(x, enc)
        return grouped_gemm(p, s, dec, bp, bs, bg, off)

    eager = step()  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for seed in range(3):
        x.copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static, step())
    assert not torch.equal(static, eager)


def test_a_cutedsl_kernel_on_the_default_stream_fails_the_graph_check(tiny_modelopt):
    """The seed bug: a DSL kernel launched on the default stream is not in the captured graph."""
    import json

    be = load_backend("cutedsl")
    if be.needs.unmet():
        pytest.skip(f"cutedsl backend: {be.needs.unmet()}")
    r = run_cli(
        "graph", "--backend", "tests/support_backends.py:DefaultStreamCuteDSL",
        "--checkpoint", str(tiny_modelopt), "--json",
    )  # fmt: skip
    res = {x["op"]: x for x in json.loads(r.stdout)}
    assert res["moe_forward"]["status"] == "fail"
    assert r.exit_code == 1


def test_cutedsl_compiles_once_and_not_during_capture():
    be = load_backend("cutedsl")
    if be.needs.unmet():
        pytest.skip(f"cutedsl backend: {be.needs.unmet()}")
    from fp4check.errors import InputError
    from fp4check.kernels.cutedsl import runtime

    seconds = runtime.warm()
    assert seconds and all(s >= 0 for s in seconds.values())
    kernel = next(iter(runtime.kernels().values()))
    arch = runtime.gpu_arch()
    if arch in kernel.archs:
        assert runtime.compile_kernel(kernel, arch) is runtime.compile_kernel(kernel, arch)
    fresh = runtime.Kernel("probe", kernel.module, kernel.entry, kernel.pointers, kernel.ints, ("probe",))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(InputError, match="during CUDA-graph capture"):
        with torch.cuda.graph(graph):
            runtime.compile_kernel(fresh, arch)


def _sm100() -> str | None:
    """Why the SM100 kernels cannot run numerically here, or None."""
    be = load_backend("cutedsl")
    if be.needs.unmet():
        return f"cutedsl backend: {be.needs.unmet()}"
    if torch.cuda.get_device_capability()[0] != 10:
        return f"needs an SM100 GPU (B200); this is compute capability {torch.cuda.get_device_capability()}"
    return None


def test_sm100_block_scaled_grouped_gemm_conforms_to_the_emulated_pipeline():
    """The tcgen05 kernel itself (K a multiple of 256, column groups of 128): its numeric check."""
    if _sm100():
        pytest.skip(_sm100())
    from fp4check.kernels.cutedsl import grouped_gemm
    from fp4check.kernels.emulated.moe import grouped_gemm_nvfp4

    a, b, offsets = _moe_operands(5, 256, 512, [130, 0, 5, 300, 1], 2)
    got = grouped_gemm(
        a.packed.cuda(),
        a.scales.view(torch.uint8).cuda(),
        a.global_scale.to_decode().value.cuda(),
        b.packed.cuda(),
        b.scales.view(torch.uint8).cuda(),
        b.global_scale.value.cuda(),
        offsets.cuda(),
    )
    want = grouped_gemm_nvfp4(a, b, offsets)
    assert torch.allclose(got.cpu().float(), want.float(), rtol=2**-6, atol=1e-3)


def test_sm100_hardware_e2m1_quantizer_is_code_for_code_the_exact_codec():
    if _sm100():
        pytest.skip(_sm100())
    from fp4check.kernels.cutedsl import nvfp4_quantize
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import global_encode_scale

    x = _adversarial(256, 1024)
    g = global_encode_scale(x.float().nan_to_num(posinf=0).abs().amax())
    packed, scales = nvfp4_quantize(x.cuda(), g.value.reshape(1).cuda())
    want = quantize_activation(x, g)
    assert torch.equal(packed.cpu(), want.packed) and torch.equal(scales.cpu(), want.scales.view(torch.uint8))


def test_quantize_every_bf16_magnitude(backend):
    """Every bf16 magnitude below 7 (4 divided by 6 rounds every magnitude's neighbourhood), each block
    closed by 6.0, under global scales that make the block scale exact or not: code for code."""
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import EncodeScale

    vals = torch.arange(0, 0x40E0, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    vals = vals[: vals.numel() // 15 * 15].reshape(-1, 15)
    x = torch.cat([vals, torch.full((vals.shape[0], 1), 6.0, dtype=torch.bfloat16)], 1)
    x = torch.cat([x, -x])[: x.shape[0] * 2 // 8 * 8].reshape(-1, 128)
    for g in (1.0, 3.0, 0.7, 1.3, 74.6741, 1e-3, 2688 / 7.0):
        want = quantize_activation(x, EncodeScale(torch.tensor(g)))
        got = backend.nvfp4_quantize(x, EncodeScale(torch.tensor(g)))
        assert torch.equal(got.scales.view(torch.uint8), want.scales.view(torch.uint8)), g
        assert torch.equal(got.packed, want.packed), g


@pytest.mark.parametrize("g_exp", [-119, -121, -125, -126, -130])
def test_quantize_near_ties_under_tiny_global_scales(backend, g_exp):
    """Global scales at and below 2^-120 (down to subnormal), blocks of amax 1.5 x 2^127: every element
    within a few fp32 ulps of a midpoint (|x| g next to m s), on both sides. The Triton quantizer's exact
    test rescales g there (`decision_scales`); a g 2^-7 gone subnormal fails this test."""
    from fp4check.kernels.emulated.moe import quantize_activation
    from fp4check.references.nvfp4 import EncodeScale

    amax = torch.tensor(1.5 * 2.0**127).to(torch.bfloat16)
    g0 = torch.tensor(1.37 * 2.0**g_exp, dtype=torch.float32)
    s = quantize_activation(torch.full((1, 16), float(amax)).to(torch.bfloat16), EncodeScale(g0)).scales
    s = s.double().flatten()[0]
    assert s > 0
    for m in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        ax = (m * s / g0.double()).to(torch.bfloat16)
        x = torch.full((1, 16), float(ax)).to(torch.bfloat16)
        x[0, 0], x[0, 1::2] = amax, -ax
        for ulps in (-2, -1, 0, 1, 2):  # g next to m s / |x|: |x| g - m s down to 2^-24 relative
            g = EncodeScale((torch.tensor(m * s / ax.double()).float().view(torch.int32) + ulps).view(torch.float32))
            want, got = quantize_activation(x, g), backend.nvfp4_quantize(x, g)
            assert torch.equal(got.scales.view(torch.uint8), want.scales.view(torch.uint8)), (m, ulps)
            assert torch.equal(got.packed, want.packed), (m, ulps)


@pytest.fixture
def triton_backend():
    be = load_backend("triton")
    if be.needs.unmet():
        pytest.skip(f"triton backend: {be.needs.unmet()}")
    return be


def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not _sm90(), reason="the wgmma GEMM (grouped_gemm_sm90) runs on SM90 GPUs only")
def test_wgmma_gemm_conforms_at_every_tile(triton_backend):
    """The SM90 kernel, into a NaN-poisoned output, against the emulated pipeline and the tl.dot kernel:
    experts with 130, 0, 5, 200, 64, 20 and 40 rows (zero padding), so the tile plan has blocks of every
    token tile size (16 to 128 rows), and a plan 256 rows past offsets[-1] whose rows hold non-zero
    garbage (written as zeros); two global scales in w13, 5 K steps (not a multiple of any ring's depth);
    at the default tiles, the narrow ones and other ring depths, with one CTA per tile and with 2 or 3
    persistent CTAs that carry the ring's slots and phases across many tiles, the 128-row tiles on a
    second stream. The GPU's tile plan is the rule's (`tile_plan.plan_reference`), each entry with its
    block's expert, and it splits the SMs between the 128-row tiles and the others by their cost."""
    from fp4check.kernels.contract import NVFP4Activation
    from fp4check.kernels.emulated.moe import grouped_gemm_nvfp4
    from fp4check.kernels.triton import grouped_gemm_sm90 as sm90
    from fp4check.kernels.triton.grouped_gemm import gemm_args, grouped_gemm
    from fp4check.kernels.triton.tile_plan import TOKEN_TILES, plan_reference
    from fp4check.kernels.triton.weight_tiles import tile_
    from fp4check.metrics import compare
    from fp4check.references.swizzle import swizzle_128x4, unswizzle_128x4

    a, b, offsets = _moe_operands(7, 512, 640, [130, 0, 5, 200, 64, 20, 40], 2, seed=5)
    want = grouped_gemm_nvfp4(a, b, offsets).float()
    extra = 256
    lin = unswizzle_128x4(a.scales, a.rows, a.cols // 16).view(torch.uint8)
    lin = torch.cat([lin, torch.full((extra, lin.shape[1]), 0x38, dtype=torch.uint8)])
    packed = torch.cat([a.packed, torch.full((extra, a.packed.shape[1]), 0x77, dtype=torch.uint8)])
    big = NVFP4Activation(packed, swizzle_128x4(lin.view(torch.float8_e4m3fn)), a.global_scale, a.rows + extra, a.cols)
    args = _gpu_args(big, b, offsets)
    tile_(args[3], args[4])
    dot = grouped_gemm(*args, tiled=True, kernel="tl.dot").float().cpu()
    assert torch.allclose(dot[: a.rows], want, rtol=2**-6, atol=1e-3) and not dot[a.rows :].any()

    kargs, _ = gemm_args(*args, tiled=True, wgmma=True)
    live, tile_expert, dev_offsets = kargs[1], kargs[6], kargs[7]
    plan, experts, counts, split = sm90.build_plan(live, dev_offsets, tile_expert, 132)
    ref = plan_reference(live.cpu(), dev_offsets.cpu())
    assert [plan[i, :c].tolist() for i, c in enumerate(counts.tolist())] == ref
    # beside each entry the expert of its block (entry = first row * 2 + has K steps)
    owner = tile_expert.cpu().tolist()
    assert [experts[i, :c].tolist() for i, c in enumerate(counts.tolist())] == [
        [owner[e // 256] for e in r] for r in ref
    ]
    assert all(ref), f"a token tile size with no block: {[len(r) for r in ref]}"
    small, hot = split.tolist()  # CTAs for the 16- to 64-row tiles and for the 128-row ones, by their cost
    cost = [len(r) * sm90.TILE_COST[bt] for r, bt in zip(ref, TOKEN_TILES, strict=True)]
    assert small + hot == 132 and abs(hot - 132 * cost[-1] / sum(cost)) <= 1, (small, hot, cost)

    other = {16: (256, 7, 2), 32: (256, 7, 2), 64: (256, 3, 4), 128: (256, 2, 2)}  # ring depths, warpgroups
    runs = [(sm90.CONFIGS, None), (sm90.NARROW, None), (other, None), (sm90.CONFIGS, 2), (sm90.NARROW, 3)]
    for configs, ctas in runs:
        kargs, out = gemm_args(*args, tiled=True, wgmma=True)
        out.fill_(float("nan"))
        sm90.launch(kargs, configs, ctas)
        got = out.float().cpu()
        m = compare(got[: a.rows], want)
        assert m["nan_out"] == 0 and got.abs().amax() > 0 and m["cosine"] > 0.99999, (configs, ctas, m)
        assert torch.allclose(got[: a.rows], want, rtol=2**-6, atol=1e-3), (configs, ctas)
        assert torch.allclose(got, dot, rtol=2**-6, atol=1e-3) and not got[a.rows :].any(), (configs, ctas)


def test_grouped_gemm_ptx_decode_equals_the_plain_op_decode(triton_backend):
    """The inline-PTX weight decode (bf16 bits from shifts, one bf16x2 multiply) against the same kernel
    decoding with plain Triton ops: the same bf16 values into the same MMAs, so the same bits out."""
    from fp4check.kernels.triton.grouped_gemm import grouped_gemm

    a, b, offsets = _moe_operands(5, 384, 1024, [130, 0, 5, 200, 64], 2, seed=3)
    args = [
        t.cuda()
        for t in (a.packed, a.scales.view(torch.uint8), a.global_scale.to_decode().value, b.packed,
                  b.scales.view(torch.uint8), b.global_scale.value, offsets)
    ]  # fmt: skip
    fast, plain = grouped_gemm(*args), grouped_gemm(*args, decode_asm=False)
    assert fast.abs().amax() > 0 and not fast.isnan().any()
    assert torch.equal(fast, plain)


def _gpu_args(a, b, offsets) -> list[torch.Tensor]:
    """grouped_gemm's positional arguments on the GPU."""
    return [
        t.cuda()
        for t in (a.packed, a.scales.view(torch.uint8), a.global_scale.to_decode().value, b.packed,
                  b.scales.view(torch.uint8), b.global_scale.value, offsets)
    ]  # fmt: skip


def test_prepared_weights_give_the_same_bits_and_restore_in_place(triton_backend):
    """prepare_weights reorders GPU weights in place (weight_tiles); the tl.dot kernel on them is
    bit-equal to the same kernel on the rows (the same values into the same MMAs), whichever kernel the
    backend picks agrees within accumulation order, and restore_weights gives back every byte."""
    from fp4check.kernels.triton.grouped_gemm import grouped_gemm

    a, b, offsets = _moe_operands(5, 384, 1024, [130, 0, 5, 200, 64], 2, seed=4)
    gpu = GroupedNVFP4(b.packed.cuda(), b.scales.cuda(), type(b.global_scale)(b.global_scale.value.cuda()))
    rows = triton_backend.grouped_gemm_nvfp4(a, gpu, offsets)
    prepared = triton_backend.prepare_weights(gpu)
    assert prepared.layout != "rows" and prepared.packed.data_ptr() == gpu.packed.data_ptr()  # no copy
    assert not torch.equal(gpu.packed.cpu(), b.packed)
    tiled = triton_backend.grouped_gemm_nvfp4(a, prepared, offsets)  # the wgmma kernel on an SM90 GPU
    assert rows.abs().amax() > 0 and not rows.isnan().any()
    assert torch.allclose(tiled.float(), rows.float(), rtol=2**-6, atol=1e-3)
    same_kernel = grouped_gemm(*_gpu_args(a, prepared, offsets), tiled=True, kernel="tl.dot")
    assert torch.equal(same_kernel.cpu(), rows)
    triton_backend.restore_weights(prepared)
    assert torch.equal(gpu.packed.cpu(), b.packed)
    assert torch.equal(gpu.scales.view(torch.uint8).cpu(), b.scales.view(torch.uint8))


@pytest.mark.parametrize("limit", [None, 7.0])
def test_fused_swiglu_quantize(triton_backend, limit):
    """act within one bf16 ulp of torch's clamped SwiGLU on the same GPU (and mostly equal), NaN where torch
    has NaN; its quantization code for code the exact codec of that act."""
    from fp4check.kernels.emulated.moe import quantize_activation, swiglu_clamp
    from fp4check.references.nvfp4 import EncodeScale

    g = torch.Generator().manual_seed(1)
    gu = (torch.randn(300, 2 * 512, generator=g) * 4).to(torch.bfloat16)
    gu[3, 5] = float("nan")
    gu[7, 600] = float("inf")
    want = swiglu_clamp(gu.cuda(), limit).cpu()
    act, quant = triton_backend.swiglu_quantize(gu, limit, EncodeScale(torch.tensor(37.5)))
    assert torch.equal(act.isnan(), want.isnan()) and act.isnan().any()
    fin = ~want.isnan()
    ulps = (act.view(torch.int16).int() - want.view(torch.int16).int()).abs()[fin]
    assert ulps.max() <= 1 and (ulps > 0).float().mean() < 0.01
    codec = quantize_activation(act, EncodeScale(torch.tensor(37.5)))
    assert torch.equal(quant.packed, codec.packed)
    assert torch.equal(quant.scales.view(torch.uint8), codec.scales.view(torch.uint8))
    assert torch.equal(triton_backend.swiglu_clamp(gu, limit).view(torch.int16), act.view(torch.int16))


@pytest.mark.parametrize("where", ["cuda", "cpu"])
def test_fp8_kv_write_is_byte_for_byte_the_codec(triton_backend, where):
    """Pages poisoned, a shuffled block table, NaN/Inf/zero/tiny/huge tiles: every byte as the codec writes
    it, and bytes of slots not written untouched."""
    from fp4check.kernels.emulated import kv_cache as kvc

    g = torch.Generator().manual_seed(0)
    n, block = 70, 16
    kv = (torch.randn(n, 512, generator=g) * torch.exp(3 * torch.randn(n, 1, generator=g))).to(torch.bfloat16)
    kv[0, 5], kv[1, 100], kv[5, 200] = float("nan"), float("inf"), -float("inf")
    kv[2, :64], kv[3, 64:128], kv[4, 128:192] = 0.0, 1e-6, 448 * 2.0**3
    kv[6] *= 1e-30
    kv[7, :448] = 3e38
    pool = kvc.PagePool(8, block, seed=1)
    slots = torch.randperm(8 * block, generator=g)[:n]
    want = pool.pages.clone()
    kvc.kv_cache_write(want, block, slots, kv)
    got = pool.pages.clone().to(where)
    triton_backend.kv_cache_write(got, block, slots.to(where), kv.to(where))
    assert torch.equal(got.cpu(), want)
