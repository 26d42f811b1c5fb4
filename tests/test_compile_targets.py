"""The triton backend's kernels build for the B200 (sm_100) and the H100 (sm_90) on this GPU-less machine:
`bench/compile_targets.py` in a subprocess (it replaces Triton's driver with a stub, which must not leak
into this process). A kernel that stops compiling for an arch, an autotune config that ptxas rejects, or
a GEMM whose tl.dot no longer becomes that arch's tensor-core MMA fails here, before any GPU sees it.
Whether the kernels compute right on a GPU is tests/test_gpu_backends.py's, on the GPU."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed (the test extra installs it on Linux x86-64)")

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"_quant_kernel", "_swiglu_kernel", "_kv_write_kernel", "_live_kernel", "_prep_a_kernel", "_gemm_kernel"}


@pytest.mark.parametrize(("arch", "mma"), [(100, "tcgen05.mma"), (90, "wgmma.mma_async")])
def test_every_triton_kernel_builds_for_the_arch(arch, mma):
    run = subprocess.run(
        [sys.executable, "bench/compile_targets.py", str(arch)], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^  (\w+): (\d+) of (\d+) variants built for (\S+); (.*)$", run.stdout, re.MULTILINE)
    assert {r[0] for r in rows} == KERNELS, run.stdout
    for name, built, total, archs, found in rows:
        assert built == total and int(total) > 0 and archs == f"sm_{arch}", (name, built, total, archs)
        if name == "_gemm_kernel":
            assert found == f"{mma} in {total}", found  # every config's MMA on the tensor cores
        else:
            assert found == "no MMA", (name, found)
