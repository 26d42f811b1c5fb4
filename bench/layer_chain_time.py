"""Whole layers and the chain on the built-in tiny checkpoint, wall time of a fresh process (imports
included): `fp4check layer --type T --mode both` for each layer type (256 tokens, the last 32 decoded
through the paged cache) and `fp4check chain` over all layers and the head (256 tokens).
Goals (2 CPU cores): layer under 10 s, chain under 20 s.
Usage: python bench/layer_chain_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_csv  # noqa: E402

COMMANDS = {
    "layer --type C4A --mode both": ["layer", "--type", "C4A", "--mode", "both"],
    "layer --type C128A --mode both": ["layer", "--type", "C128A", "--mode", "both"],
    "layer --type SWA --mode both": ["layer", "--type", "SWA", "--mode", "both"],
    "chain": ["chain"],
}
GOALS = {"chain": 20.0}


def one(args: list[str]) -> float:
    out = Path(tempfile.mkdtemp()) / "run"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fp4check", *args, "--out", str(out), "--json"], check=True, capture_output=True
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "fp4check", "info"], check=True, capture_output=True)  # cache the checkpoint
    rows = []
    for name, cmd in COMMANDS.items():
        walls = [one(cmd) for _ in range(args.runs)]
        rows.append(
            {
                **machine(),
                "command": f"fp4check {name}",
                "runs": args.runs,
                "median_s": round(statistics.median(walls), 2),
                "min_s": round(min(walls), 2),
                "max_s": round(max(walls), 2),
                "goal_s": GOALS.get(name, 10.0),
            }
        )
        print(rows[-1]["command"], rows[-1]["median_s"], rows[-1]["min_s"], rows[-1]["max_s"])
    print(write_csv("layer_chain_tiny.csv", rows))


if __name__ == "__main__":
    main()
