"""The built-in tiny checkpoint: generated once into a cache folder, regenerated when the generator changes.

The folder is $FP4CHECK_CACHE, else $XDG_CACHE_HOME/fp4check, else ~/.cache/fp4check. Generation
writes into a temporary folder and renames it into place, so parallel runs never see half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fp4check.synth.writer import GENERATOR_VERSION, STAMP_FILE, synthesize

DEFAULT_PRESET = "tiny"
DEFAULT_FORMAT = "modelopt"
DEFAULT_SEED = 0


def cache_dir() -> Path:
    if os.environ.get("FP4CHECK_CACHE"):
        return Path(os.environ["FP4CHECK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fp4check"


def _current(path: Path) -> bool:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("generator_version") == GENERATOR_VERSION


def default_checkpoint(progress: Callable[[int, int, str], None] | None = None) -> tuple[Path, bool]:
    """(path of the built-in tiny checkpoint, whether it was generated now)."""
    root = cache_dir()
    path = root / f"{DEFAULT_PRESET}-{DEFAULT_FORMAT}-seed{DEFAULT_SEED}"
    if _current(path):
        return path, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".generating-", dir=root))
    try:
        synthesize(tmp, DEFAULT_PRESET, DEFAULT_FORMAT, DEFAULT_SEED, progress=progress)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:  # another process put a current one in place first
            if not _current(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path, True
