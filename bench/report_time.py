"""Report generation for a `full` suite run on the tiny checkpoint: time to write the HTML and JUnit, and
the HTML's size. Goal: under 3 s. Usage: python bench/report_time.py [--runs 3]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    run = tmp / "full"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fp4check", "run", "--suite", "full", "--out", str(run)], capture_output=True)
    suite_s = time.perf_counter() - t0
    rows = len((run / "results.jsonl").read_text().splitlines())
    walls = []
    for i in range(args.runs):
        html, junit = tmp / f"r{i}.html", tmp / f"r{i}.xml"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fp4check",
                "report",
                str(run),
                "--html",
                str(html),
                "--junit",
                str(junit),
                "--json",
            ],
            capture_output=True,
        )
        walls.append(time.perf_counter() - t0)
    size = html.stat().st_size
    row = {
        **machine(),
        "suite": "full",
        "rows": rows,
        "suite_s": f"{suite_s:.1f}",
        "runs": args.runs,
        "report_median_s": f"{statistics.median(walls):.2f}",
        "html_bytes": size,
        "junit_bytes": junit.stat().st_size,
        "goal_s": "3",
        "command": "fp4check report RUN --html FILE --junit FILE --json",
    }
    print(
        f"full suite: {rows} rows in {suite_s:.1f} s; report (HTML + JUnit, fresh process) median "
        f"{statistics.median(walls):.2f} s; HTML {size / 1024:.0f} KiB"
    )
    print("wrote", write_csv("report_full_tiny.csv", [row]))


if __name__ == "__main__":
    main()
