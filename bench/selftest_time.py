"""`fp4check selftest` on the built-in tiny checkpoint, fresh process: wall time. Goal: under 60 s on 2 cores.
Usage: python bench/selftest_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "fp4check", "info"], check=True, capture_output=True)  # cache the checkpoint
    walls, caught = [], None
    for _ in range(args.runs):
        out = Path(tempfile.mkdtemp()) / "st"
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "fp4check", "selftest", "--out", str(out), "--json"], capture_output=True, text=True
        )
        walls.append(time.perf_counter() - t0)
        m = json.loads(r.stdout)["matrix"]
        caught = sum(1 for x in m if x["fault"] != "(clean)" and x["ok"]), sum(1 for x in m if x["fault"] != "(clean)")
    row = {
        **machine(),
        "runs": args.runs,
        "median_s": f"{statistics.median(walls):.1f}",
        "min_s": f"{min(walls):.1f}",
        "max_s": f"{max(walls):.1f}",
        "faults_caught": f"{caught[0]}/{caught[1]}",
        "goal_s": "60",
        "command": "fp4check selftest",
    }
    print(
        f"selftest: median {statistics.median(walls):.1f} s over {args.runs} runs, "
        f"{caught[0]}/{caught[1]} faults caught"
    )
    print("wrote", write_csv("selftest_tiny.csv", [row]))


if __name__ == "__main__":
    main()
