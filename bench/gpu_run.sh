#!/usr/bin/env bash
# Everything the GPU issue measures, in device calls of under 10 minutes each:
#   PART=tests  GPU tests of the triton backend, fp4check graph, bench quant / act / kv
#   PART=bench  bench l1 and l2, uniform and skewed routing
#   PART=layer  a full-size Pro layer on the GPU (bench/gpu_full_layer.sh)
# Usage (on the GPU machine, from the repository root): OUT=dir PART=tests bash bench/gpu_run.sh
set -u
OUT=${OUT:-bench/results}
PART=${PART:-tests}
mkdir -p "$OUT"
CSV="$OUT/gpu_bench.csv"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bench() {  # bench OP [options]: the table to a file, its rows to stdout
  local name=$1; shift
  fp4check bench "$@" --csv "$CSV" > "$OUT/gpu_bench_$name.txt" 2>&1
  grep -E "│" "$OUT/gpu_bench_$name.txt" | cut -c1-160
}
if [ "$PART" = tests ]; then
  python3 -m pytest -q -p no:xdist -p no:cacheprovider -rfs tests/test_gpu_backends.py tests/test_graph.py \
    tests/test_gpu_codecs.py tests/test_bench.py tests/test_tile_plan.py > "$OUT/gpu_pytest_triton.log" 2>&1
  grep -E "passed|failed|^FAILED" "$OUT/gpu_pytest_triton.log" | head -30; grep -E "^E  " "$OUT/gpu_pytest_triton.log" | cut -c1-200 | head -20
  fp4check graph --backend triton > "$OUT/gpu_graph_triton.txt" 2>&1
  grep -E "moe_forward|quantize|grouped|swiglu" "$OUT/gpu_graph_triton.txt" | cut -c1-150
  bench quant quant
  bench act act
  bench kv kv
elif [ "$PART" = bench ]; then
  for op in l1 l2; do
    for routing in uniform skewed; do
      bench "${op}_$routing" "$op" --routing "$routing"
    done
  done
else
  OUT="$OUT" bash bench/gpu_full_layer.sh
fi
echo done > "$OUT/finished"
