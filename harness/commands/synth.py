"""`fp4check synth`: write a synthetic DeepSeek-V4 checkpoint in a real format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fp4check.options import json_option, seed_option
from fp4check.reports.terminal import progress_bar, stdout_console
from fp4check.synth.catalog import DEFECTS, FORMATS, NAMINGS
from fp4check.synth.presets import PRESETS

_DEFECT_HELP = "; ".join(f"{k}: {v}" for k, v in DEFECTS.items())


@click.command()
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="tiny",
    show_default=True,
    help="tiny (a few MB, 4 layers: C128A, C4A, SWA), small, or one layer at real Flash/Pro shapes.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default="modelopt",
    show_default=True,
    help="modelopt: NVIDIA's NVFP4 release layout; compressed-tensors: NVFP4 community export; "
    "deepseek: the original FP8 + MXFP4 release; bf16: unquantized.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Directory to write (must not hold a checkpoint)."
)
@seed_option
@click.option(
    "--defect",
    "defects",
    multiple=True,
    metavar="NAME@WHERE",
    help=f"Inject a defect at a family, e.g. bad-input-scale@L1.E0.w1 (repeatable). {_DEFECT_HELP}.",
)
@click.option(
    "--names",
    type=click.Choice(list(NAMINGS)),
    default="deepseek",
    show_default=True,
    help="Tensor naming: DeepSeek-native or transformers' deepseek_v4 (bf16 only).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where values are drawn and encoded: cuda makes a full-size layer in minutes instead of hours "
    "(different random streams: same seed and device, identical bytes).",
)
@json_option
def synth(
    preset: str, fmt: str, out: Path, seed: int, defects: tuple[str, ...], names: str, device: str, as_json: bool
) -> None:
    """Write a synthetic checkpoint: realistic heavy-tailed weights, calibrated input scales, sharded with
    an index like the releases. Same seed, identical bytes."""
    from fp4check.errors import InputError
    from fp4check.synth.writer import synthesize

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda needs a CUDA GPU, and this machine has none: drop --device")
    with progress_bar(f"synth {preset} ({fmt})") as update:
        r = synthesize(out, preset, fmt, seed, defects, names, progress=update, device=device)
    if as_json:
        click.echo(
            json.dumps(
                {"path": str(r.path), "tensors": r.tensors, "bytes": r.bytes, "shards": r.shards, **r.stamp}, indent=2
            )
        )
        return
    extra = f", defects: {', '.join(r.stamp['defects'])}" if r.stamp["defects"] else ""
    stdout_console().print(
        f"[green]wrote[/green] {r.path}: preset {preset}, format {fmt}, seed {seed}, {r.tensors} tensors, "
        f"{r.bytes / 2**20:.1f} MiB in {r.shards} shard(s){extra}" + (f", drawn on {device}" if device != "cpu" else "")
    )
