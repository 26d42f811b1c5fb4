"""`fp4check bench` without a GPU: the CSV contract (rows of every op line up in one file) and clean errors.
The timings themselves come from device runs (bench/results)."""

import csv

import pytest
import torch
from conftest import run_cli

from fp4check.commands.bench import CSV_FIELDS, _append_csv
from fp4check.errors import InputError


def test_rows_of_different_ops_line_up_in_one_csv(tmp_path):
    path = tmp_path / "bench.csv"
    quant = {"op": "quant", "variant": "triton eager", "median_us": 92.8, "GBps": 1621.0, "of_copy_bw": 0.38}
    gemm = {"op": "l1", "variant": "triton eager", "median_us": 15287.3, "TFLOPs": 141.6, "of_matmul": 0.196,
            "config": "BN=128, BT=64"}  # fmt: skip
    _append_csv(path, [quant])
    _append_csv(path, [gemm])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[0]["GBps"] == "1621.0" and rows[0]["TFLOPs"] == ""
    assert rows[1]["TFLOPs"] == "141.6" and rows[1]["GBps"] == "" and rows[1]["config"] == "BN=128, BT=64"


def test_a_csv_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("GBps,command\n1,x\n")
    with pytest.raises(InputError, match="other columns"):
        _append_csv(path, [{"op": "quant"}])
    assert path.read_text() == "GBps,command\n1,x\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("op", ["quant", "l1", "act", "kv"])
def test_bench_without_a_gpu_is_one_clear_line(op):
    r = run_cli("bench", op)
    assert r.exit_code == 2
    assert "cannot run here" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("args", "named"), [(["--warm", "-1"], "--warm"), (["--runs", "10"], "--runs")])
def test_bad_timing_options_are_one_clear_line_before_any_gpu_work(args, named):
    r = run_cli("bench", "l1", *args)
    assert r.exit_code == 2
    assert named in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
