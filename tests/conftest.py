import os
import warnings
from pathlib import Path

import pytest
from hypothesis import settings

warnings.filterwarnings("ignore")

# CI runs the same examples every time (a failure there reproduces); local runs keep exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run gets its own FP4CHECK_CACHE, so the built-in checkpoint is generated fresh."""
    path = tmp_path_factory.mktemp("fp4check-cache")
    old = os.environ.get("FP4CHECK_CACHE")
    os.environ["FP4CHECK_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FP4CHECK_CACHE", None)
    else:
        os.environ["FP4CHECK_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_modelopt(tmp_path_factory) -> Path:
    from fp4check.synth.writer import synthesize

    out = tmp_path_factory.mktemp("ckpt") / "tiny-modelopt"
    synthesize(out, "tiny", "modelopt", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_ct(tmp_path_factory) -> Path:
    from fp4check.synth.writer import synthesize

    out = tmp_path_factory.mktemp("ckpt") / "tiny-ct"
    synthesize(out, "tiny", "compressed-tensors", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory) -> Path:
    from fp4check.synth.writer import synthesize

    out = tmp_path_factory.mktemp("ckpt") / "tiny-bf16"
    synthesize(out, "tiny", "bf16", seed=0)
    return out


def run_cli(*args: str):
    """Invoke fp4check in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from fp4check.cli import cli

    return CliRunner().invoke(cli, list(args), prog_name="fp4check", catch_exceptions=False)
