"""`fp4check kernel` and `fp4check layer`: MoE checks on checkpoint weights, written to a results folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option
from fp4check.reports.terminal import progress_bar, stdout_console

SCENARIO_NAMES = ("natural", "uniform", "skewed", "empty-experts", "single-token", "hash", "ep-rank")
KERNEL_OP_NAMES = ("quant", "swizzle", "route", "l1", "act", "l2", "combine", "shared", "moe")


def check_options(f):
    for opt in reversed(
        [
            checkpoint_option,
            click.option(
                "--backend",
                default="emulated",
                show_default=True,
                help="Backend under test: reference, emulated, an entry point, module:attr or file.py:attr.",
            ),
            click.option("--tokens", type=int, default=256, show_default=True, help="Tokens in the batch."),
            click.option(
                "--scenario",
                type=click.Choice(SCENARIO_NAMES),
                default="natural",
                show_default=True,
                help="Routing scenario (see README).",
            ),
            seed_option,
            click.option(
                "--act-scales",
                type=click.Choice(["auto", "checkpoint", "warmup"]),
                default="auto",
                show_default=True,
                help="Activation global scales: the checkpoint's input_scale, or a warm-up amax.",
            ),
            click.option(
                "--ep-size", type=int, default=1, show_default=True, help="Expert-parallel ranks to simulate."
            ),
            click.option("--ep-rank", type=int, default=0, show_default=True, help="The rank this run is."),
            click.option(
                "--threshold",
                "thresholds",
                multiple=True,
                metavar="STAGE.VS=MIN",
                help="Override a gate, e.g. l1.reference=0.97 (repeatable).",
            ),
            click.option(
                "--config",
                type=click.Path(path_type=Path),
                default=None,
                help="Thresholds file (default: ./fp4check.toml if present).",
            ),
            click.option(
                "--out",
                type=click.Path(path_type=Path),
                default=None,
                help="Results folder (default fp4check-runs/<time>-<id>/).",
            ),
            click.option(
                "--inject",
                default="",
                metavar="FAULT[,FAULT]",
                help="Switch known bugs on in the emulated backend (see fp4check selftest).",
            ),
            click.option("--isolate", is_flag=True, help="Run each check in its own subprocess (crashes become rows)."),
            click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds per isolated check."),
            json_option,
        ]
    ):
        f = opt(f)
    return f


def _run(ckpt, specs: list[dict], opts: dict, title: str | None = None, extra_meta: dict | None = None) -> None:
    import json

    from fp4check.reports.store import RunWriter, new_run_dir
    from fp4check.reports.table import render
    from fp4check.runner import run_checks
    from fp4check.thresholds import Thresholds

    path, run_id = new_run_dir(opts["out"])
    meta = {
        **run_meta(ckpt, opts["seed"], opts["backend"]),
        "isolate": opts["isolate"],
        "thresholds": Thresholds.load(opts["thresholds"], opts["config"]).table,
        **(extra_meta or {}),
    }
    writer = RunWriter(path, run_id, meta)
    with progress_bar("checks") as update:
        rows = run_checks(specs, writer, opts["isolate"], opts["timeout"], progress=update)
    writer.finish()
    bad = [r for r in rows if r["status"] in ("fail", "error", "crash", "timeout")]
    written = write_reports(path, opts.get("html"), opts.get("junit"))
    if opts["as_json"]:
        click.echo(json.dumps({"run_dir": str(path), "rows": rows}, default=str))
    else:
        con = stdout_console()
        render(rows, con, title=f"{title or specs[0]['check']} - backend {opts['backend']}")
        con.print(f"results: {path}" + "".join(f"  {kind}: {p}" for kind, p in written))
    sys.exit(1 if bad else 0)


def write_reports(run_dir: Path, html: Path | None, junit: Path | None) -> list[tuple[str, Path]]:
    """Write the HTML and JUnit renderings of a results folder where asked; returns what was written."""
    import json

    from fp4check.reports.html import render_html
    from fp4check.reports.junit import render_junit
    from fp4check.reports.store import read_run

    if not html and not junit:
        return []
    meta, rows, complete = read_run(run_dir)
    trace_file = Path(run_dir) / "trace.json"
    trace = json.loads(trace_file.read_text()) if trace_file.is_file() else None
    out = []
    if html:
        Path(html).write_text(render_html(meta, rows, complete, trace=trace))
        out.append(("html", Path(html)))
    if junit:
        Path(junit).write_text(render_junit(meta, rows))
        out.append(("junit", Path(junit)))
    return out


def _faults(opts: dict) -> list[str]:
    return [f.strip() for f in (opts.get("inject") or "").split(",") if f.strip()]


def _git_sha() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
    except OSError:
        return None
    return out.stdout.strip() or None


def base_spec(ckpt, opts: dict) -> dict:
    """The check-spec fields every check of one command shares."""
    return {
        "seed": opts["seed"],
        "act_scales": opts["act_scales"],
        "ep_size": opts["ep_size"],
        "ep_rank": opts["ep_rank"],
        "isolated": True,
        "backend": opts["backend"],
        "checkpoint": str(ckpt.path),
        "thresholds": list(opts["thresholds"]),
        "config": str(opts["config"]) if opts["config"] else None,
        "inject": _faults(opts),
    }


def run_meta(ckpt, seed: int, backend: str) -> dict:
    """meta.json fields every results folder carries."""
    from fp4check.environment import gpus, versions

    return {
        "command": " ".join(["fp4check", *sys.argv[1:]]),
        "versions": versions(),
        "gpus": gpus(),
        "git_sha": _git_sha(),
        "checkpoint": str(ckpt.path),
        "checkpoint_fingerprint": ckpt.fingerprint(),
        "seed": seed,
        "backend": backend,
    }


def _spec(ckpt, check: str, stages, layer: int, opts: dict, propagated: bool) -> dict:
    return {
        **base_spec(ckpt, opts),
        "check": check,
        "stages": list(stages),
        "layer": layer,
        "scenario": opts["scenario"],
        "tokens": opts["tokens"],
        "propagated": propagated,
    }


def _prepare(opts: dict, layer: int | None, layer_type: str | None):
    from fp4check.errors import InputError
    from fp4check.kernels.registry import load_backend
    from fp4check.scenarios import pick_layer
    from fp4check.thresholds import Thresholds

    ckpt = open_checkpoint(opts["checkpoint"])
    load_backend(opts["backend"], _faults(opts))  # bad backend specs fail here, before any folder is made
    Thresholds.load(opts["thresholds"], opts["config"])
    if opts["tokens"] < 1 or opts["tokens"] > 65536:
        raise InputError(f"--tokens {opts['tokens']} is out of range (1..65536)")
    return ckpt, pick_layer(ckpt, opts["scenario"], layer, layer_type)


@click.command()
@click.argument("ops", nargs=-1, required=True, type=click.Choice(KERNEL_OP_NAMES))
@click.option("--layer", type=int, default=None, help="Layer whose weights to use (default: the first bias-routed).")
@check_options
def kernel(ops: tuple[str, ...], layer: int | None, **opts) -> None:
    """One kernel (or several, each a check) vs the reference and the emulated NVFP4 pipeline, on checkpoint
    weights: quant, swizzle, route, l1, act, l2, combine, shared, or moe (the whole block)."""
    from fp4check.moe_check import KERNEL_OPS

    ckpt, layer_idx = _prepare(opts, layer, None)
    specs = [_spec(ckpt, f"kernel.{op}", KERNEL_OPS[op], layer_idx, opts, propagated=(op == "moe")) for op in ops]
    _run(ckpt, specs, opts)


@click.command()
@click.option(
    "--type",
    "layer_type",
    type=click.Choice(["C4A", "C128A", "SWA"]),
    default=None,
    help="The first layer of this type (bias-routed where there is one).",
)
@click.option("--layer", type=int, default=None, help="A layer by index.")
@click.option(
    "--only",
    type=click.Choice(["moe"]),
    default="moe",
    show_default=True,
    help="Which half of the layer: the MoE half (attention arrives with the attention checks).",
)
@check_options
def layer(layer_type: str | None, layer: int | None, only: str, **opts) -> None:
    """One decoder layer's MoE half, stage by stage: route, quant_l1, l1, act, quant_l2, l2, combine, shared,
    out; isolated and propagated, vs the reference and vs the emulated pipeline."""
    from fp4check.errors import InputError
    from fp4check.moe_check import PIPELINE

    if (layer_type is None) == (layer is None) and opts["scenario"] != "hash":
        raise InputError("give exactly one of --type C4A|C128A|SWA or --layer N")
    ckpt, layer_idx = _prepare(opts, layer, layer_type)
    _run(ckpt, [_spec(ckpt, "layer.moe", PIPELINE, layer_idx, opts, propagated=True)], opts)
