"""Options shared by the commands, named the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import click

from fp4check.checkpoint import Checkpoint
from fp4check.reports.terminal import progress_bar, stderr_console

checkpoint_option = click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint directory (config.json + safetensors). Default: the built-in tiny checkpoint.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of tables.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def open_checkpoint(path: Path | None) -> Checkpoint:
    """Open --checkpoint, or the built-in tiny checkpoint (generated on first use, with a progress bar)."""
    if path is None:
        from fp4check.cache import default_checkpoint  # the generator needs torch; an explicit path does not

        with progress_bar("generating the built-in tiny checkpoint") as update:
            path, made = default_checkpoint(progress=update)
        if made:
            stderr_console().print(f"built-in tiny checkpoint written to {path}")
    return Checkpoint(path)
