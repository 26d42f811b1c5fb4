"""The HTML report in a real browser: headless Chromium renders it, runs its script, and takes a screenshot.

Skipped with the reason where no Chromium is installed (.ci/run installs Debian's chromium)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("FP4CHECK_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
SUPPORT = Path(__file__).resolve().parent / "support_backends.py"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


def _chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def test_report_renders_in_chromium(tiny_modelopt, tmp_path):
    run = tmp_path / "run"
    run_cli(
        "kernel", "l1", "act", "--checkpoint", str(tiny_modelopt), "--backend", f"{SUPPORT}:NoClamp", "--out", str(run)
    )
    page = tmp_path / "report.html"
    run_cli("report", str(run), "--html", str(page))
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert 'data-ready="1"' in dom  # the page's script ran in the browser
    n = len((run / "results.jsonl").read_text().splitlines())
    assert f'<span id="shown">{n}</span>' in dom  # the filter counted every row
    assert "<title>fp4check report" in dom
    assert 'class="fail" data-status="fail"' in dom and "L1.moe.act" in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    _chromium(tmp_path, "--window-size=1400,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000
