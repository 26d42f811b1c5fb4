"""The `cutedsl` backend without a GPU (CI installs the `cutedsl` extra):

Tier 1: every kernel compiles for each arch it targets with fake pointers, and its PTX holds the
instructions that make it what it claims (WGMMA and TMA on sm_90a, the block-scaled tcgen05 MMA on
sm_100a, the hardware e2m1 conversion only in the SM100 quantizer). Tier 2: the pure-torch models of
what the kernels do that the CPU can check (the SM100 quantizer's tie-break argument, the tile maps).
The harness's DSL traps: the compile cache, the capture guard, the canary, the registry's listing.
GPU numerics live in tests/test_gpu_backends.py."""

import pytest
import torch

from fp4check.errors import InputError
from fp4check.kernels.registry import load_backend

cutlass = pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cutedsl]')")

from fp4check.kernels.cutedsl import chunk_tiles, runtime, tile_experts  # noqa: E402

CASES = [(name, arch) for name, k in runtime.kernels().items() for arch in k.archs]


@pytest.mark.parametrize(("name", "arch"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_kernel_compiles_without_a_gpu_and_holds_its_instructions(name, arch):
    kernel = runtime.kernels()[name]
    ptx = runtime.ptx_of(kernel, arch)
    assert f".target {arch}" in ptx
    for instruction in kernel.expect[arch]:
        assert instruction in ptx, f"{name} for {arch} lacks {instruction}"


def test_the_sm90_quantizer_encodes_e2m1_in_software():
    """sm_90a has no e2m1 conversion (it does not assemble there): the SM90 path must not use it."""
    kernels = runtime.kernels()
    assert "e2m1x2" not in runtime.ptx_of(kernels["nvfp4_quantize.sw_e2m1"], "sm_90a")
    assert "e2m1x2" in runtime.ptx_of(kernels["nvfp4_quantize.hw_e2m1"], "sm_100a")


def test_the_grouped_gemms_use_tensor_cores_of_their_arch():
    kernels = runtime.kernels()
    sm90 = runtime.ptx_of(kernels["grouped_gemm.sm90"], "sm_90a")
    sm100 = runtime.ptx_of(kernels["grouped_gemm.sm100"], "sm_100a")
    assert "wgmma.mma_async.sync.aligned" in sm90 and "bf16.bf16" in sm90 and "tcgen05" not in sm90
    assert "kind::mxf4nvf4.block_scale.block16" in sm100 and "wgmma" not in sm100


def test_compiles_are_cached_and_timed(monkeypatch):
    import cutlass.cute as cute

    calls = []
    real = cute.compile

    def counting(*args, **kwargs):
        calls.append(kwargs.get("options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cute, "compile", counting)
    monkeypatch.setattr(runtime, "_cache", {})
    kernel = runtime.kernels()["dequant.linear"]
    first = runtime.compile_kernel(kernel, "sm_90a")
    assert runtime.compile_kernel(kernel, "sm_90a") is first
    assert calls == ["--gpu-arch sm_90a"]
    assert runtime.compile_times[("dequant.linear", "sm_90a")] > 0


def test_compiling_during_graph_capture_is_refused(monkeypatch):
    monkeypatch.setattr(runtime, "_cache", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(InputError, match="during CUDA-graph capture.*warm"):
        runtime.compile_kernel(runtime.kernels()["dequant.linear"], "sm_90a")


def test_the_canary_catches_memory_changed_by_a_compile(monkeypatch):
    """A compile that zeroes memory allocated before it (the seeds' suspicion) fails loudly."""
    import cutlass.cute as cute

    seen = []

    class Recorded(runtime._Canary):
        def __init__(self):
            super().__init__()
            seen.append(self)

    def zeroing_compile(*args, **kwargs):
        seen[-1].host.zero_()
        return object()

    monkeypatch.setattr(runtime, "_Canary", Recorded)
    monkeypatch.setattr(runtime, "_cache", {})
    monkeypatch.setattr(cute, "compile", zeroing_compile)
    with pytest.raises(runtime.CanaryError, match="changed during the compile"):
        runtime.compile_kernel(runtime.kernels()["dequant.linear"], "sm_90a")
    assert ("dequant.linear", "sm_90a", ()) not in runtime._cache


def test_a_real_compile_leaves_the_canary_intact(monkeypatch):
    monkeypatch.setattr(runtime, "_cache", {})
    assert runtime.compile_kernel(runtime.kernels()["dequant.swizzled"], "sm_90a") is not None


def test_the_backend_is_registered_and_says_what_it_needs():
    be = load_backend("cutedsl")
    assert be.name == "cutedsl" and "nvidia-cutlass-dsl" in be.needs.describe()
    if not torch.cuda.is_available():
        assert be.needs.unmet() == "no CUDA GPU visible to torch"


def test_checks_on_a_machine_without_the_gpu_skip_with_the_reason(tiny_modelopt):
    from conftest import run_cli

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    r = run_cli("kernel", "quant", "l1", "--backend", "cutedsl", "--checkpoint", str(tiny_modelopt), "--json")
    import json

    rows = json.loads(r.stdout)["rows"]
    assert r.exit_code == 0 and rows and {x["status"] for x in rows} == {"skip"}
    assert "no CUDA GPU" in rows[0]["message"]


def test_doctor_lists_the_cutedsl_kernels():
    import json

    from conftest import run_cli

    r = run_cli("doctor", "--json")
    assert r.exit_code == 0
    listed = {k["kernel"]: k for k in json.loads(r.stdout)["cutedsl_kernels"]}
    assert set(listed) == set(runtime.kernels())
    assert listed["grouped_gemm.sm100"]["archs"] == ["sm_100a"]
    assert any("wgmma" in i for i in listed["grouped_gemm.sm90"]["instructions"])
    if not torch.cuda.is_available():
        assert {k["here"] for k in listed.values()} == {"compiles only"}


# --- tier 2: pure-torch models of what the kernels compute ------------------------------------------


def _hw_e2m1_with_tiebreak(x: torch.Tensor, g: float) -> torch.Tensor:
    """The SM100 quantizer's algorithm in float32 torch ops (IEEE, round to nearest even): the hardware
    converts the twice-rounded quotient q = fl(fl(|x| g) / s); where q lands on a midpoint, the exact
    product decides. Returns magnitude codes [R, K]."""
    from fp4check.references.nvfp4 import EncodeScale, nvfp4_quantize

    g32 = torch.tensor(g, dtype=torch.float32)
    ref = nvfp4_quantize(x.float(), EncodeScale(g32))
    s = ref.scales.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=1)
    ax = x.float().abs()
    q = (ax * g32) / s
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    up = torch.tensor([False, True, False, True, False, True, False])
    # the hardware: RNE onto the e2m1 grid, saturating (a tie goes to the even code, i.e. up where `up`)
    code = ((q.unsqueeze(-1) > mids) | ((q.unsqueeze(-1) == mids) & up)).sum(-1)
    exact = ax.double() * float(g32)  # the exact product (bf16 x float32 fits a double)
    for i, m in enumerate(mids.tolist()):
        t = m * s.double()
        above = (exact > t) | ((exact == t) & up[i])
        code = torch.where(q == m, i + above.to(torch.int64), code)
    return torch.where(s > 0, code, 0)  # a block whose scale is 0 stores code 0


def test_the_sm100_tiebreak_is_code_for_code_the_exact_codec():
    """Rounding is monotone and m * s_b is exact, so the twice-rounded quotient can land on a midpoint
    only from beside it: fixing those cases alone reproduces the exact decision, ties included."""
    from fp4check.references.nvfp4 import EncodeScale, nvfp4_quantize

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 256, generator=gen) * torch.exp(2 * torch.randn(64, 1, generator=gen))).to(torch.bfloat16)
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    x[0, :16] = torch.cat([mids, -mids]).to(torch.bfloat16)
    hits = 0
    for g in (1.0, 3.0, 448.0 * 6 / 7.5, 0.1234567):
        want = nvfp4_quantize(x.float(), EncodeScale(torch.tensor(g))).packed
        codes = torch.stack([want & 15, want >> 4], -1).flatten(-2).to(torch.int64) & 7
        got = _hw_e2m1_with_tiebreak(x, g)
        assert torch.equal(got, codes), f"global scale {g}"
        s = nvfp4_quantize(x.float(), EncodeScale(torch.tensor(g))).scales.view(torch.float8_e4m3fn).float()
        q = (x.float().abs() * g) / s.repeat_interleave(16, dim=1)
        hits += int(torch.isin(q, mids[:-1]).sum())
    assert hits > 0  # the tie-break path was exercised


def test_tile_experts_and_chunks_partition_the_rows():
    offsets = torch.tensor([0, 256, 256, 384, 768])  # expert 1 empty; rows past 768 are padding
    tiles = tile_experts(offsets, 1024)
    assert tiles.tolist() == [0, 0, 2, 3, 3, 3, 4, 4]
    n_exp, cover = 4, torch.zeros(8, dtype=torch.int64)
    for e0 in range(0, n_exp, 3):
        local = chunk_tiles(tiles, e0, min(n_exp, e0 + 3), n_exp)
        written = local >= 0
        cover += written.to(torch.int64)
        live = written & (local < min(n_exp, e0 + 3) - e0)
        assert torch.equal((local[live] + e0), tiles[live])
    assert cover.tolist() == [1] * 8  # every tile written by exactly one chunk, padding included
