"""Bytes read to load one layer of a sharded checkpoint, against that layer's tensor bytes.

Two meters: fp4check's own count (headers + tensor bytes) and the kernel's /proc/self/io rchar (every
byte a read syscall returned to this process), taken around the load alone. Goal: <= 1.05x.
Usage: python bench/layer_bytes.py [--preset small] [--format modelopt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_csv  # noqa: E402

from fp4check.checkpoint import Checkpoint  # noqa: E402
from fp4check.synth.writer import synthesize  # noqa: E402


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--format", default="modelopt")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp()) / "ckpt"
    synthesize(root, args.preset, args.format, seed=0)
    rows = []
    n_layers = Checkpoint(root).config.num_hidden_layers
    for layer in range(n_layers):
        ckpt = Checkpoint(root)  # opening reads config + index only
        before_own, before_os = ckpt.bytes_read, rchar()
        weights = ckpt.layer(layer)
        os_bytes = rchar() - before_os
        tensor_bytes = sum(w.nbytes for w in weights.values())
        own = ckpt.bytes_read - before_own
        rows.append(
            {
                **machine(),
                "preset": args.preset,
                "format": args.format,
                "layer": layer,
                "shards": len(ckpt.shard_files),
                "shards_opened": len(ckpt.shards_opened),
                "layer_tensor_bytes": tensor_bytes,
                "bytes_read_fp4check": own,
                "bytes_read_rchar": os_bytes,
                "ratio_fp4check": f"{own / tensor_bytes:.4f}",
                "ratio_rchar": f"{os_bytes / tensor_bytes:.4f}",
                "goal": "1.05",
                "command": f"python bench/layer_bytes.py --preset {args.preset} --format {args.format}",
            }
        )
        print(
            f"layer {layer}: {tensor_bytes / 2**20:.1f} MiB of tensors, read {own / 2**20:.2f} MiB "
            f"({own / tensor_bytes:.4f}x; rchar {os_bytes / tensor_bytes:.4f}x), "
            f"{len(ckpt.shards_opened)}/{len(ckpt.shard_files)} shards opened"
        )
    print("wrote", write_csv(f"layer_bytes_{args.preset}_{args.format}.csv", rows))


if __name__ == "__main__":
    main()
