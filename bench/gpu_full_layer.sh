#!/usr/bin/env bash
# A full-size V4-Pro layer on one GPU: synthesize it on the GPU, then `fp4check layer --device cuda`,
# every stage, with the peak GPU memory against the layer's weight bytes and the wall time.
# Usage (on the GPU machine, from the repository root): OUT=dir BACKEND=triton bash bench/gpu_full_layer.sh
set -u
OUT=${OUT:-bench/results}
BACKEND=${BACKEND:-triton}
CK=${CK:-/tmp/pro-layer}
mkdir -p "$OUT"
if [ ! -f "$CK/config.json" ]; then
  /usr/bin/time -v fp4check synth --preset pro-layer --device cuda --out "$CK" > "$OUT/pro_synth.txt" 2> "$OUT/pro_synth_time.txt"
  tail -3 "$OUT/pro_synth.txt"; grep -E "Elapsed|Maximum resident" "$OUT/pro_synth_time.txt"
fi
du -sh "$CK"
/usr/bin/time -v fp4check layer --type C4A --device cuda --backend "$BACKEND" --checkpoint "$CK" --out "$OUT/pro_layer_run" \
  > "$OUT/pro_layer_c4a_${BACKEND}.txt" 2> "$OUT/pro_layer_time.txt"
echo "layer exit $?"
grep -E "GPU |results:" "$OUT/pro_layer_c4a_${BACKEND}.txt"
grep -E "Elapsed|Maximum resident" "$OUT/pro_layer_time.txt"
tail -5 "$OUT/pro_layer_time.txt"
