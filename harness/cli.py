"""The `fp4check` command: a click group whose commands live in fp4check.commands, one per module.

Bad input never shows a traceback: an InputError (or a click usage error) prints one line on stderr
naming the thing and the fix, and exits 2.
"""

from __future__ import annotations

import sys

import click

from fp4check import __version__
from fp4check.commands.audit import audit
from fp4check.commands.bench import bench
from fp4check.commands.chain import chain
from fp4check.commands.checks import kernel, layer
from fp4check.commands.compare import diff, history
from fp4check.commands.doctor import doctor
from fp4check.commands.graph import graph
from fp4check.commands.info import info
from fp4check.commands.report import report
from fp4check.commands.run import run
from fp4check.commands.selftest import selftest
from fp4check.commands.synth import synth
from fp4check.commands.trace import nan_trace
from fp4check.errors import InputError

EXIT_INPUT_ERROR = 2


class Fp4checkGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except InputError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_INPUT_ERROR)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "fp4check"
            click.echo(f"error: {e.format_message()} (see '{cmd} --help')", err=True)
            sys.exit(EXIT_INPUT_ERROR)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Fp4checkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fp4check")
def cli() -> None:
    """Validate NVFP4 inference kernels for DeepSeek-V4-class MoE models, stage by stage, from checkpoint
    weights against BF16/FP32 references.

    Without --checkpoint, commands use the built-in tiny synthetic checkpoint (generated on first use
    into $FP4CHECK_CACHE, default ~/.cache/fp4check).
    """


cli.add_command(info)
cli.add_command(synth)
cli.add_command(doctor)
cli.add_command(kernel)
cli.add_command(layer)
cli.add_command(chain)
cli.add_command(report)
cli.add_command(run)
cli.add_command(diff)
cli.add_command(history)
cli.add_command(selftest)
cli.add_command(audit)
cli.add_command(nan_trace)
cli.add_command(bench)
cli.add_command(graph)


def main() -> None:
    cli.main(prog_name="fp4check")
