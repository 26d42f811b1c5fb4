"""`fp4check layer --type C4A --only moe` on the built-in tiny checkpoint: wall time and peak memory of a
fresh process (imports included), at 256 and 8192 tokens. Goal: under 5 s at 256 tokens on 2 CPU cores.
Usage: python bench/moe_layer_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_csv  # noqa: E402


def one(tokens: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp()) / "run"
    cmd = [
        sys.executable,
        "-m",
        "fp4check",
        "layer",
        "--type",
        "C4A",
        "--only",
        "moe",
        "--tokens",
        str(tokens),
        "--out",
        str(out),
        "--json",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, in KiB
    return wall, max(peak, before) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "fp4check", "info"], check=True, capture_output=True)  # cache the checkpoint
    rows = []
    for tokens in (256, 8192):
        results = [one(tokens) for _ in range(args.runs)]
        walls = [w for w, _ in results]
        peak = max(p for _, p in results)
        rows.append(
            {
                **machine(),
                "tokens": tokens,
                "runs": args.runs,
                "median_s": f"{statistics.median(walls):.2f}",
                "min_s": f"{min(walls):.2f}",
                "max_s": f"{max(walls):.2f}",
                "peak_rss_mib": f"{peak / 2**20:.0f}",
                "goal_s": "5" if tokens == 256 else "",
                "command": f"fp4check layer --type C4A --only moe --tokens {tokens}",
            }
        )
        print(
            f"{tokens} tokens: median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}), "
            f"peak RSS {peak / 2**20:.0f} MiB"
        )
    print("wrote", write_csv("moe_layer_tiny.csv", rows))


if __name__ == "__main__":
    main()
