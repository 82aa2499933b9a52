"""Progress bars and messages on stderr, so that stdout stays one JSON object under --json."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)
# Human-readable results (tables) go to stdout; progress and messages to stderr.
out = Console(highlight=False)


def info(message: str) -> None:
    console.print(message)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator["_Bar"]:
    if not enabled:
        yield _Bar(None, None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")
        yield _Bar(progress, task)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)
