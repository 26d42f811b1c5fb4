"""Terminal output: one console for results (stdout), one for progress and messages (stderr)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

STATUS_STYLE = {
    "pass": "green",
    "fail": "bold red",
    "error": "red",
    "crash": "bold magenta",
    "skip": "yellow",
    "ok": "green",
    "missing": "yellow",
}


def stdout_console() -> Console:
    return Console(soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True)


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "white")
    return f"[{style}]{status}[/{style}]"


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A progress callback (done, total, current item) drawing a bar on stderr."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[item]}"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as p:
        task = p.add_task(description, total=None, item="")

        def update(done: int, total: int, item: str) -> None:
            p.update(task, completed=done, total=total, item=item)

        yield update
