"""Running checks: in this process, or each in its own subprocess (--isolate) so that a kernel that kills
its process (abort, segfault, a CUDA device assert that poisons the context) or hangs is recorded as
`crash` or `timeout` with the tail of its stderr, and every other check still runs and is recorded.
Rows are appended to the results folder as each check finishes.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fp4check.errors import InputError
from fp4check.reports.store import RunWriter
from fp4check.rows import make_row

ROW_MARK = "FP4CHECK-ROW "
STDERR_TAIL = 600


def execute(spec: dict) -> list[dict]:
    """All rows of one check, computed in this process. spec is plain JSON (see checks_for). With
    spec["device"] = "cuda" the checkpoint's tensors go to the GPU as read and every tensor the check
    makes is made there (torch's default device)."""
    device = spec.get("device", "cpu")
    if device == "cpu":
        return _execute(spec, None)
    import torch

    with torch.device(device):
        return _execute(spec, device)


def _execute(spec: dict, device: str | None) -> list[dict]:
    from fp4check.checkpoint import Checkpoint
    from fp4check.kernels.registry import load_backend
    from fp4check.moe_check import MoECheck, moe_rows
    from fp4check.thresholds import Thresholds

    ckpt = Checkpoint(spec["checkpoint"])
    ckpt.device = device
    backend = load_backend(spec["backend"], spec.get("inject") or ())
    thresholds = Thresholds.load(
        tuple(spec.get("thresholds", ())), Path(spec["config"]) if spec.get("config") else None
    )
    ctx = {"dtype": "nvfp4", "run_id": spec.get("run_id")}
    if spec.get("kind") == "layer":
        from fp4check.layer_check import LayerCheck, layer_rows

        fields = ("check", "layer", "tokens", "seed", "only", "phase", "ref_mode", "act_scales")
        return layer_rows(ckpt, backend, LayerCheck(**{k: spec[k] for k in fields}), thresholds, ctx)
    if spec.get("kind") == "chain":
        import torch

        from fp4check.chain_check import ChainCheck, chain_rows

        c = ChainCheck(
            spec["first"],
            spec["last"],
            torch.tensor(spec["token_ids"], dtype=torch.int64),
            spec["seed"],
            spec["ref_mode"],
            spec["act_scales"],
            Path(spec["dump"]) if spec.get("dump") else None,
        )
        return chain_rows(ckpt, backend, c, thresholds, ctx)
    check = MoECheck(
        **{
            k: spec[k]
            for k in (
                "check",
                "stages",
                "layer",
                "scenario",
                "tokens",
                "seed",
                "act_scales",
                "ep_size",
                "ep_rank",
                "propagated",
                "isolated",
            )
        }
    )
    return moe_rows(ckpt, backend, check, thresholds, ctx)


def _failure_row(spec: dict, status: str, message: str) -> dict:
    stages = spec.get("stages") or ["layer"]
    stage = stages[0] if len(stages) == 1 else "moe"
    base = {
        "check": spec["check"],
        "layer": spec["layer"],
        "scenario": spec.get("scenario", "natural"),
        "seed": spec["seed"],
        "tokens": spec["tokens"],
        "backend": spec["backend"],
    }
    sid = f"L{spec['layer']}.moe.{stage}" if stage != "moe" else f"L{spec['layer']}.moe"
    return make_row(base, sid, stage, "reference", "isolated", {}, "cosine", math.nan, status=status, message=message)


def execute_isolated(spec: dict, timeout: float) -> list[dict]:
    """Run one check in a fresh Python process; a crash or a hang becomes a row."""
    cmd = [sys.executable, "-m", "fp4check.worker"]
    try:
        proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-STDERR_TAIL:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return [_failure_row(spec, "timeout", f"no result after {timeout:g} s; stderr tail: {tail.strip()}")]
    rows = [json.loads(line[len(ROW_MARK) :]) for line in proc.stdout.splitlines() if line.startswith(ROW_MARK)]
    if proc.returncode == 0:
        return rows
    if proc.returncode == 2 and not rows:  # bad input inside the worker: the same one line as in-process
        raise InputError(
            proc.stderr.strip().splitlines()[-1].removeprefix("error: ")
            if proc.stderr.strip()
            else f"check {spec['check']} failed on its input"
        )
    how = (
        f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    )
    tail = proc.stderr[-STDERR_TAIL:].strip()
    return rows + [_failure_row(spec, "crash", f"process {how}; stderr tail: {tail}")]


def run_checks(
    specs: list[dict],
    writer: RunWriter,
    isolate: bool,
    timeout: float,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict]:
    rows: list[dict] = []
    for i, spec in enumerate(specs):
        if progress:
            progress(i, len(specs), spec["check"])
        spec = {**spec, "run_id": writer.run_id}
        got = execute_isolated(spec, timeout) if isolate else execute(spec)
        writer.write(got)
        rows.extend(writer.rows[-len(got) :] if got else [])
    if progress:
        progress(len(specs), len(specs), "done")
    return rows
