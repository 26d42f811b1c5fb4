"""Results folders: the contract for reports and CI (DESIGN.md §5).

    <run>/meta.json       command, versions, GPU, git sha, checkpoint fingerprint, seed, start/end time
    <run>/results.jsonl   one row per (check, stage, comparison), appended as each check finishes
    <run>/results.parquet and results.csv   written when the run ends

A killed run keeps every finished row in results.jsonl; readers fall back to it when the parquet file
is missing, and tolerate a last line cut off mid-write.
"""

from __future__ import annotations

import json
import math
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fp4check.errors import InputError

COLUMNS = (
    "run_id",
    "check",
    "stage",
    "layer",
    "layer_type",
    "backend",
    "compared_to",
    "propagation",
    "phase",
    "ref_mode",
    "tokens",
    "scenario",
    "seed",
    "shape",
    "dtype",
    "cosine",
    "rel_l2",
    "max_abs",
    "sqnr_db",
    "nan_out",
    "inf_out",
    "nan_ref",
    "inf_ref",
    "amax_out",
    "amax_ref",
    "code_match",
    "scale_match",
    "max_code_distance",
    "overlap",
    "metric",
    "value",
    "threshold",
    "status",
    "message",
    "seconds",
    "peak_mem_bytes",
    "act_scales",
)
STATUSES = ("pass", "fail", "error", "crash", "timeout", "skip")
DEFAULT_ROOT = "fp4check-runs"


def new_run_dir(out: Path | None) -> tuple[Path, str]:
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    path = Path(out) if out is not None else Path(DEFAULT_ROOT) / run_id
    if (path / "results.jsonl").exists():
        raise InputError(f"{path} already holds a run: pick another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path, run_id


TEXT = (
    "run_id",
    "check",
    "stage",
    "layer_type",
    "backend",
    "compared_to",
    "propagation",
    "phase",
    "ref_mode",
    "scenario",
    "shape",
    "dtype",
    "metric",
    "status",
    "message",
    "act_scales",
)
NUMERIC = tuple(c for c in COLUMNS if c not in TEXT)


def _clean(v):
    """NaN becomes null; +-inf stays a float (an infinite SQNR means an exact match)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class RunWriter:
    def __init__(self, path: Path, run_id: str, meta: dict):
        self.path, self.run_id = path, run_id
        self.meta = {"run_id": run_id, "start": datetime.now(UTC).isoformat(), **meta}
        self._write_meta()
        self._jsonl = open(path / "results.jsonl", "a")
        self.rows: list[dict] = []

    def _write_meta(self) -> None:
        (self.path / "meta.json").write_text(json.dumps(self.meta, indent=2, default=str) + "\n")

    def write(self, rows: list[dict]) -> None:
        for r in rows:
            row = {c: _clean(r.get(c)) for c in COLUMNS}
            row["run_id"] = self.run_id
            self._jsonl.write(json.dumps(row) + "\n")
            self.rows.append(row)
        self._jsonl.flush()

    def finish(self) -> None:
        import pandas as pd

        self._jsonl.close()
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        for c in NUMERIC:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
        for c in TEXT:
            frame[c] = frame[c].astype("string")
        frame.to_csv(self.path / "results.csv", index=False)
        frame.to_parquet(self.path / "results.parquet", index=False)
        self.meta["end"] = datetime.now(UTC).isoformat()
        self.meta["counts"] = {s: sum(1 for r in self.rows if r["status"] == s) for s in STATUSES}
        self._write_meta()


def read_run(path: Path) -> tuple[dict, list[dict], bool]:
    """(meta, rows, complete) of a results folder; a partial folder reads from its JSONL."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"results folder {path} does not exist")
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    jsonl = path / "results.jsonl"
    if not jsonl.is_file():
        raise InputError(f"{path} holds no results.jsonl: not an fp4check results folder")
    rows = []
    for line in jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line of a killed run may be cut off
    return meta, rows, "end" in meta
