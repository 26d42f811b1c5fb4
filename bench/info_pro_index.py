"""`fp4check info` on a checkpoint laid out like the DeepSeek-V4-Pro release (145k tensors, 64 shards).

The shards are sparse files: real headers (names, dtypes, shapes, offsets) followed by a hole as large
as the data, so the layout is the release's without 805 GB of disk. Goal: under 2 s.
Usage: python bench/info_pro_index.py [--format deepseek] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_csv  # noqa: E402

from fp4check.config import parse_config  # noqa: E402
from fp4check.layout import model_families  # noqa: E402
from fp4check.safetensors_io import DTYPES  # noqa: E402
from fp4check.synth.formats import quantization_config, storage_of, stored_layout  # noqa: E402
from fp4check.synth.presets import PRO_RELEASE  # noqa: E402

SHARDS = 64


def build(root: Path, fmt: str) -> tuple[int, int]:
    cfg_dict = {k: v for k, v in PRO_RELEASE.items() if k != "quantization_config"}
    qc, hf = quantization_config(fmt, PRO_RELEASE["num_hidden_layers"])
    if qc:
        cfg_dict["quantization_config"] = qc
    cfg = parse_config(cfg_dict, hf)
    tensors = []
    for spec in model_families(cfg).values():
        for member, (dtype, shape) in stored_layout(spec, storage_of(spec, fmt)).items():
            n = 1
            for s in shape:
                n *= s
            tensors.append((f"{spec.name}.{member}" if member else spec.name, dtype, shape, n * DTYPES[dtype][1]))
    total = sum(t[3] for t in tensors)
    per_shard = total / SHARDS
    weight_map, shard, acc, headers = {}, [], 0, []
    for t in tensors:
        shard.append(t)
        acc += t[3]
        if acc >= per_shard * (len(headers) + 1) and len(headers) < SHARDS - 1:
            headers.append(shard)
            shard = []
    headers.append(shard)
    for i, items in enumerate(headers):
        name = f"model-{i + 1:05d}-of-{len(headers):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for tname, dtype, shape, nbytes in items:
            header[tname] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            weight_map[tname] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)  # a hole: the data's size, no disk
    (root / "config.json").write_text(json.dumps(cfg_dict))
    if hf:
        (root / "hf_quant_config.json").write_text(json.dumps(hf))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return len(tensors), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="deepseek")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "pro"
    root.mkdir()
    n, total = build(root, args.format)
    walls, inproc = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fp4check", "info", "--checkpoint", str(root), "--json"],
            check=True,
            capture_output=True,
        )
        walls.append(time.perf_counter() - t0)
    from fp4check.checkpoint import Checkpoint
    from fp4check.commands.info import describe

    for _ in range(args.runs):
        t0 = time.perf_counter()
        d = describe(Checkpoint(root))
        inproc.append(time.perf_counter() - t0)
    assert d["tensors"] == n
    row = {
        **machine(),
        "format": args.format,
        "tensors": n,
        "shards": SHARDS,
        "apparent_bytes": total,
        "runs": args.runs,
        "process_median_s": f"{statistics.median(walls):.2f}",
        "in_process_median_s": f"{statistics.median(inproc):.2f}",
        "goal_s": "2",
        "command": f"python bench/info_pro_index.py --format {args.format}",
    }
    print(
        f"{n} tensors in {SHARDS} sparse shards ({total / 1e9:.0f} GB apparent): fp4check info median "
        f"{statistics.median(walls):.2f} s per process, {statistics.median(inproc):.2f} s in process"
    )
    print("wrote", write_csv(f"info_pro_{args.format}.csv", [row]))


if __name__ == "__main__":
    main()
