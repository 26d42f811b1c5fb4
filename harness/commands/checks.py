"""`fp4check kernel` and `fp4check layer`: MoE checks on checkpoint weights, written to a results folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fp4check.options import checkpoint_option, json_option, open_checkpoint, seed_option
from fp4check.reports.terminal import progress_bar, stdout_console

SCENARIO_NAMES = ("natural", "uniform", "skewed", "empty-experts", "single-token", "hash", "ep-rank")
KERNEL_OP_NAMES = ("quant", "swizzle", "route", "l1", "act", "l2", "combine", "shared", "moe")


_BACKEND = click.option(
    "--backend",
    default="emulated",
    show_default=True,
    help="Backend under test: reference, emulated, an entry point, module:attr or file.py:attr.",
)
_TOKENS = click.option("--tokens", type=int, default=256, show_default=True, help="Tokens in the batch.")
_SCENARIO = click.option(
    "--scenario",
    type=click.Choice(SCENARIO_NAMES),
    default="natural",
    show_default=True,
    help="Routing scenario (see README).",
)
_ACT_SCALES = click.option(
    "--act-scales",
    type=click.Choice(["auto", "checkpoint", "warmup"]),
    default="auto",
    show_default=True,
    help="Activation global scales: the checkpoint's input_scale, or a warm-up amax.",
)
_DEVICE = click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the check computes: cuda puts the weights on the GPU in their packed form and runs the "
    "reference, the emulated pipeline and the backend there (full-size layers); GPU memory peak reported.",
)
_EP = [
    click.option("--ep-size", type=int, default=1, show_default=True, help="Expert-parallel ranks to simulate."),
    click.option("--ep-rank", type=int, default=0, show_default=True, help="The rank this run is."),
]
_RUN = [
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


ref_mode_option = click.option(
    "--ref-mode",
    type=click.Choice(["served", "exact"]),
    default="served",
    show_default=True,
    help="Reference attention: served (FP8 KV cache rounding, as deployed) or exact (bf16 kv).",
)


def _apply(f, options):
    for opt in reversed(options):
        f = opt(f)
    return f


def check_options(f):
    """The options of the checks that take a batch of tokens (kernel, layer, nan-trace)."""
    return _apply(f, [checkpoint_option, _BACKEND, _TOKENS, _SCENARIO, seed_option, _ACT_SCALES, _DEVICE, *_EP, *_RUN])


def chain_options(f):
    """The options of `fp4check chain`: the same names, less what a chain fixes (batch, routing, EP)."""
    return _apply(f, [checkpoint_option, _BACKEND, seed_option, _ACT_SCALES, *_RUN])


def _run(
    ckpt, specs: list[dict], opts: dict, title: str | None = None, extra_meta: dict | None = None, summary=None
) -> None:
    import json

    from fp4check.reports.store import RunWriter, new_run_dir
    from fp4check.reports.table import render
    from fp4check.runner import run_checks
    from fp4check.thresholds import Thresholds

    gpu = _gpu_run(ckpt, specs, opts)
    path, run_id = new_run_dir(opts["out"])
    meta = {
        **run_meta(ckpt, opts["seed"], opts["backend"]),
        "isolate": opts["isolate"],
        "device": opts.get("device", "cpu"),
        "thresholds": Thresholds.load(opts["thresholds"], opts["config"]).table,
        **(extra_meta or {}),
    }
    writer = RunWriter(path, run_id, meta)
    with progress_bar("checks") as update:
        if gpu is not None:
            gpu.start()
        rows = run_checks(specs, writer, opts["isolate"], opts["timeout"], progress=update)
        if gpu is not None:
            writer.meta["gpu_memory"] = gpu.stop()
    writer.finish()
    bad = [r for r in rows if r["status"] in ("fail", "error", "crash", "timeout")]
    written = write_reports(path, opts.get("html"), opts.get("junit"))
    if opts["as_json"]:
        click.echo(json.dumps({"run_dir": str(path), "rows": rows}, default=str))
    else:
        con = stdout_console()
        render(rows, con, title=f"{title or specs[0]['check']} - backend {opts['backend']}")
        if summary is not None:
            summary(rows, con)
        if gpu is not None:
            con.print(gpu.line(writer.meta["gpu_memory"]))
        con.print(f"results: {path}" + "".join(f"  {kind}: {p}" for kind, p in written))
    sys.exit(1 if bad else 0)


def _gpu_run(ckpt, specs: list[dict], opts: dict):
    """The GPU meter of a --device cuda run (None on the CPU); the specs learn the device."""
    if opts.get("device", "cpu") == "cpu":
        return None
    import torch

    from fp4check.errors import InputError
    from fp4check.gpu_memory import GpuMeter

    if not torch.cuda.is_available():
        raise InputError("--device cuda needs a CUDA GPU, and this machine has none: drop --device or use a GPU host")
    if opts["isolate"]:
        raise InputError("--device cuda measures GPU memory in this process: drop --isolate")
    for spec in specs:
        spec["device"] = opts["device"]
    layers = sorted({s["layer"] for s in specs if s.get("layer") is not None})
    return GpuMeter(ckpt, layers)


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
        "ep_size": opts.get("ep_size", 1),
        "ep_rank": opts.get("ep_rank", 0),
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


TYPE_ALIASES = {"CSA": "C4A", "HCA": "C128A"}


def _layer_type(ctx, param, value: str | None) -> str | None:
    return None if value is None else TYPE_ALIASES.get(value.upper(), value.upper())


def _pick_typed_layer(ckpt, layer_type: str) -> int:
    from fp4check.errors import InputError

    found = ckpt.config.layers_of_type(layer_type)
    if not found:
        have = sorted({li.layer_type for li in ckpt.config.layers})
        raise InputError(f"this checkpoint has no {layer_type} layer: it has {', '.join(have)}")
    bias = [i for i in found if ckpt.config.layers[i].routing == "bias"]
    return (bias or found)[0]


@click.command()
@click.option(
    "--type",
    "layer_type",
    type=click.Choice(["C4A", "C128A", "SWA", "CSA", "HCA"], case_sensitive=False),
    callback=_layer_type,
    default=None,
    help="The first layer of this type, bias-routed where there is one (CSA = C4A, HCA = C128A).",
)
@click.option("--layer", type=int, default=None, help="A layer by index.")
@click.option(
    "--only",
    type=click.Choice(["attn", "moe"]),
    default=None,
    help="One half: attn (attention + decode), or moe (the MoE block alone, with --scenario routing).",
)
@click.option(
    "--mode",
    "phase",
    type=click.Choice(["prefill", "decode", "both"]),
    default="both",
    show_default=True,
    help="Prefill rows, decode rows (the last 32 tokens one at a time through the paged cache), or both.",
)
@ref_mode_option
@check_options
def layer(layer_type: str | None, layer: int | None, only: str | None, phase: str, ref_mode: str, **opts) -> None:
    """One decoder layer, stage by stage: hc pre -> attention (q, kv, compress, indexer, kv_write, kv_read,
    core, out) -> hc post -> hc pre -> MoE (route .. out) -> hc post; isolated and propagated, vs the
    reference and vs the emulated pipeline; prefill, and decode through the paged FP8 KV cache."""
    from fp4check.errors import InputError
    from fp4check.moe_check import PIPELINE

    if only == "moe":
        if (layer_type is None) == (layer is None) and opts["scenario"] != "hash":
            raise InputError("give exactly one of --type C4A|C128A|SWA or --layer N")
        ckpt, layer_idx = _prepare(opts, layer, layer_type)
        _run(ckpt, [_spec(ckpt, "layer.moe", PIPELINE, layer_idx, opts, propagated=True)], opts)
        return
    if (layer_type is None) == (layer is None):
        raise InputError("give exactly one of --type C4A|C128A|SWA or --layer N")
    if opts["scenario"] != "natural":
        raise InputError("--scenario applies to --only moe; a whole layer routes its own MoE input")
    ckpt, layer_idx = _prepare(opts, layer, None)
    if layer_type is not None:
        layer_idx = _pick_typed_layer(ckpt, layer_type)
    info = ckpt.config.layers[layer_idx]
    spec = {
        **base_spec(ckpt, opts),
        "kind": "layer",
        "check": "layer" if only is None else f"layer.{only}",
        "layer": layer_idx,
        "tokens": opts["tokens"],
        "only": only,
        "phase": phase,
        "ref_mode": ref_mode,
    }
    title = f"layer {layer_idx} ({info.layer_type}, {info.routing}-routed), {opts['tokens']} tokens"
    if layer_type is not None:
        title = f"first {layer_type} layer: " + title
    _run(ckpt, [spec], opts, title=title, extra_meta={"ref_mode": ref_mode, "phase": phase})
