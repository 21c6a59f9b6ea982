"""Where crosslens talks to a person: results on stdout, progress and messages on stderr.

One place for the two consoles and the progress bar, so every command and the experiment runner
look and behave alike (a bar on long work, one line per message, nothing on stdout but results).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["console", "out_console", "progress", "warn", "escape", "Progress"]

console = Console(stderr=True)  # progress, warnings, errors
out_console = Console()  # results


def warn(line: str) -> None:
    """One yellow line on stderr (plain text, never markup)."""
    console.print(f"[yellow]{escape(line)}", highlight=False)


def _columns(label: str, *extra: ProgressColumn) -> tuple[ProgressColumn, ...]:
    return (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def progress(
    total: int, what: str, enabled: bool = True, *extra: ProgressColumn, **fields: object
) -> Iterator[tuple[Callable[..., None], Callable[[str], None], Console]]:
    """A progress bar over ``total`` units: yields (advance(n, **fields), rename(description), console).

    ``what`` is shown bold and may be renamed as the work moves on (the experiment's stages).
    """
    with Progress(*_columns("[bold]{task.description}", *extra), console=console, disable=not enabled) as bar:
        task = bar.add_task(what, total=total, **fields)

        def advance(n: int = 0, **values: object) -> None:
            if values:
                bar.update(task, **values)
            if n:
                bar.advance(task, n)

        yield advance, (lambda text: bar.update(task, description=text)), bar.console
