"""Generate README's command reference from each command's --help: `python tests/scripts_readme.py --write`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def render_reference() -> str:
    from click.testing import CliRunner

    from fp4check.cli import cli

    parts = []
    for name in ["", *sorted(cli.commands)]:
        args = [name, "--help"] if name else ["--help"]
        out = CliRunner().invoke(cli, args, prog_name="fp4check", terminal_width=100).stdout
        title = f"fp4check {name}".strip()
        parts.append(f"### `{title}`\n\n```\n{out.rstrip()}\n```\n")
    return "\n".join(parts)


def write() -> None:
    text = README.read_text()
    new = re.sub(
        r"(<!-- commands:start -->\n).*?(<!-- commands:end -->)",
        lambda m: m.group(1) + render_reference() + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(new)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(render_reference())
