#!/usr/bin/env bash
# Everything the GPU issue measures, in one device call: GPU tests, fp4check graph, fp4check bench, and
# a full-size Pro layer on the GPU (bench/gpu_full_layer.sh).
# Usage (on the GPU machine, from the repository root): OUT=dir bash bench/gpu_run.sh
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pytest -q -p no:xdist -p no:cacheprovider tests/test_gpu_backends.py tests/test_graph.py tests/test_gpu_codecs.py \
  > "$OUT/gpu_pytest_triton.log" 2>&1
tail -3 "$OUT/gpu_pytest_triton.log"
fp4check graph --backend triton > "$OUT/gpu_graph_triton.txt" 2>&1
fp4check graph --backend emulated > "$OUT/gpu_graph_emulated.txt" 2>&1
grep -E "moe_forward|quantize|grouped|swiglu" "$OUT"/gpu_graph_*.txt | cut -c1-150
CSV="$OUT/gpu_bench.csv"
fp4check bench quant --csv "$CSV" > "$OUT/gpu_bench_quant.txt" 2>&1
for op in l1 l2; do
  for routing in uniform skewed; do
    fp4check bench $op --routing $routing --csv "$CSV" > "$OUT/gpu_bench_${op}_${routing}.txt" 2>&1
  done
done
for f in "$OUT"/gpu_bench_*.txt; do tail -4 "$f"; done
OUT="$OUT" bash bench/gpu_full_layer.sh
echo done > "$OUT/finished"
