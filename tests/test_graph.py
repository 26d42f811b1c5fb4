"""`fp4check graph`: the CUDA-graph check fails each capture-unsafe pattern of the seed log with its reason
and passes safe ops (skipped without a GPU)."""

import pytest
import torch
from conftest import run_cli

from fp4check.graph_check import check_op

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def _inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(4096, generator=g).cuda()] for _ in range(n)]


@gpu
def test_a_safe_op_passes():
    r = check_op("scale", lambda x: x * 2 + 1, [torch.randn(4096).cuda()], _inputs())
    assert r.status == "pass" and r.replays == 3


@gpu
def test_item_in_the_forward_is_a_host_sync():
    r = check_op("item", lambda x: x * x.abs().max().item(), [torch.randn(4096).cuda()], _inputs())
    assert r.status == "fail" and "host sync" in r.reason


@gpu
def test_dynamic_slicing_with_a_gpu_scalar_is_a_host_sync():
    r = check_op("slice", lambda x: x[: (x > 0).sum()] * 2, [torch.randn(4096).cuda()], _inputs())
    assert r.status == "fail" and "host sync" in r.reason


@gpu
def test_work_on_another_stream_is_missed_by_the_graph():
    side = torch.cuda.Stream()
    out = torch.empty(4096, device="cuda")

    def fn(x):
        with torch.cuda.stream(side):  # not forked from the capturing stream: never captured
            out.copy_(x * 3)
        side.synchronize()
        return out

    r = check_op("side-stream", fn, [torch.randn(4096).cuda()], _inputs())
    assert r.status == "fail", r
    assert "replay differs" in r.reason or "host sync" in r.reason


@gpu
def test_graph_command_on_the_emulated_backend_names_its_host_syncs(tiny_modelopt):
    r = run_cli("graph", "--backend", "emulated", "--checkpoint", str(tiny_modelopt), "--json")
    assert r.exit_code == 1
    import json

    res = {x["op"]: x for x in json.loads(r.stdout)}
    assert res["grouped_gemm_nvfp4"]["status"] == "fail" and "host sync" in res["grouped_gemm_nvfp4"]["reason"]
    assert res["swiglu_clamp"]["status"] == "pass"
    # its route planning sizes buffers from GPU values: routing inside a graph cannot be captured
    assert res["moe_forward"]["status"] == "fail" and "host sync" in res["moe_forward"]["reason"]


def test_graph_without_a_gpu_is_a_clear_error(tiny_modelopt):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    r = run_cli("graph", "--checkpoint", str(tiny_modelopt))
    assert r.exit_code == 2 and "CUDA GPU" in r.stderr and "Traceback" not in r.stderr
