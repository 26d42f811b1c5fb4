"""The built wheel installs every subpackage under its fp4check import name."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = [
    "fp4check",
    "fp4check.commands",
    "fp4check.synth",
    "fp4check.kernels",
    "fp4check.kernels.emulated",
    "fp4check.kernels.reference",
    "fp4check.kernels.triton",
    "fp4check.kernels.cutedsl",
    "fp4check.references",
    "fp4check.reports",
]


def test_every_folder_with_code_is_packaged():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert declared == set(SUBPACKAGES)
    roots = {
        "harness": "fp4check",
        "kernels": "fp4check.kernels",
        "references": "fp4check.references",
        "reports": "fp4check.reports",
    }
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join([name, *rel]) in declared, init


@pytest.mark.slow
def test_wheel_builds_and_imports(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("fp4check-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib, sys\n"
        f"mods = {SUBPACKAGES!r} + ['fp4check.cli', 'fp4check.references.nvfp4', 'fp4check.kernels.registry']\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(site)!r}), (m, mod.__file__)\n"
        "from fp4check.cli import cli\n"
        "print('ok', sorted(cli.commands))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok" in r.stdout and "synth" in r.stdout
