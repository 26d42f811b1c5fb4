#!/usr/bin/env bash
# Everything the cutedsl issue measures on a GPU, in one device call: the DSL's import and compile times,
# the GPU tests of both GPU backends, fp4check kernel/layer/graph with --backend cutedsl, and fp4check
# bench (cutedsl next to triton and the dequantize-then-torch alternative, in the same run).
# Needs nvidia-cutlass-dsl importable (see ../shared/tools/dsl-wheels.sh for a machine without a registry).
# Usage (on the GPU machine, from the repository root): OUT=dir bash bench/gpu_cutedsl.sh
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/cutedsl_compile.txt"
import time
t = time.perf_counter()
import cutlass, cutlass.cute  # noqa: E401
print(f"cutlass {cutlass.__version__} import {time.perf_counter() - t:.2f} s")
from fp4check.kernels.cutedsl import runtime
print("arch", runtime.gpu_arch())
for name, s in runtime.warm().items():
    print(f"compile {name}: {s:.2f} s")
PY
python3 -m pytest -q -p no:xdist -p no:cacheprovider -rfs --tb=line tests/test_gpu_backends.py tests/test_cutedsl.py tests/test_graph.py \
  > "$OUT/gpu_pytest.log" 2>&1
grep -E "passed|failed|FAILED|SKIPPED|Error|^/" "$OUT/gpu_pytest.log" | cut -c1-300 | head -40
CK=/tmp/tiny-modelopt
fp4check synth --preset tiny --format modelopt --out "$CK" > /dev/null 2>&1 || fp4check synth --out "$CK" > /dev/null 2>&1
fp4check kernel quant l1 l2 --backend cutedsl --checkpoint "$CK" > "$OUT/cutedsl_kernel.txt" 2>&1; echo "kernel exit $?"
tail -25 "$OUT/cutedsl_kernel.txt" | cut -c1-160
fp4check layer --type C4A --only moe --backend cutedsl --checkpoint "$CK" > "$OUT/cutedsl_layer.txt" 2>&1; echo "layer exit $?"
tail -8 "$OUT/cutedsl_layer.txt" | cut -c1-160
fp4check graph --backend cutedsl > "$OUT/cutedsl_graph.txt" 2>&1; echo "graph exit $?"
cut -c1-160 "$OUT/cutedsl_graph.txt" | tail -12
CSV="$OUT/cutedsl_bench.csv"
fp4check bench quant --backend cutedsl --csv "$CSV" > "$OUT/cutedsl_bench_quant.txt" 2>&1
tail -9 "$OUT/cutedsl_bench_quant.txt"
for op in l1 l2; do
  fp4check bench $op --backend cutedsl --csv "$CSV" > "$OUT/cutedsl_bench_${op}.txt" 2>&1
  tail -9 "$OUT/cutedsl_bench_${op}.txt"
done
OUT="$OUT" BACKEND=cutedsl timeout 200 bash bench/gpu_full_layer.sh
echo done > "$OUT/finished"
