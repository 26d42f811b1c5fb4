"""`fp4check run --suite quick|ci|full`: a named suite of checks into one results folder, reports at the end."""

from __future__ import annotations

from pathlib import Path

import click

from fp4check.commands.checks import _prepare, _run, base_spec, check_options


@click.command()
@click.option(
    "--suite",
    type=click.Choice(["quick", "ci", "full"]),
    default="quick",
    show_default=True,
    help="quick: each layer type whole and the key scenarios (CPU, under a minute on the tiny checkpoint); "
    "ci: + every layer, the chain, and the scenarios the B200 gate needs; full: + exact mode, every layer "
    "x scenario and kernel.",
)
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write the HTML report here.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML here.")
@check_options
def run(suite: str, html: Path | None, junit: Path | None, **opts) -> None:
    """Run a suite of checks with a progress bar; one results folder, the report written at the end."""
    from fp4check.suites import suite_checks

    opts["scenario"] = "natural"
    ckpt, _ = _prepare(opts, None, None)
    base = base_spec(ckpt, opts)
    specs = [{**base, **c} for c in suite_checks(suite, ckpt, opts["tokens"], opts["seed"])]
    opts.update(html=html, junit=junit)
    _run(ckpt, specs, opts, title=f"suite {suite}", extra_meta={"suite": suite})
