"""Time `fp4check synth --preset tiny` end to end (a fresh process each run, imports included).

Goal: under 10 s on 2 CPU cores. Usage: python bench/synth_time.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    times = []
    for fmt in ("modelopt", "compressed-tensors", "bf16"):
        walls = []
        for _ in range(args.runs):
            out = Path(tempfile.mkdtemp()) / "ckpt"
            cmd = [sys.executable, "-m", "fp4check", "synth", "--preset", "tiny", "--format", fmt, "--out", str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
            shutil.rmtree(out.parent)
        times.append(
            {
                **machine(),
                "format": fmt,
                "runs": args.runs,
                "median_s": f"{statistics.median(walls):.2f}",
                "min_s": f"{min(walls):.2f}",
                "max_s": f"{max(walls):.2f}",
                "goal_s": "10",
                "command": f"fp4check synth --preset tiny --format {fmt} --out DIR",
            }
        )
        print(
            f"synth tiny {fmt}: median {statistics.median(walls):.2f} s over {args.runs} runs "
            f"(min {min(walls):.2f}, max {max(walls):.2f})"
        )
    print("wrote", write_csv("synth_tiny.csv", times))


if __name__ == "__main__":
    main()
