"""Progress bars and messages on stderr, so that stdout stays one JSON object under --json.

Rich markup is off everywhere: messages carry user text (paths, model names, error messages), and
a path such as ``runs/[abc]/model.onnx`` must print as it is. Style a whole message with
``info(text, style)``; never with ``[bold]...[/bold]`` tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, markup=False)
# Human-readable results (tables) go to stdout; progress and messages to stderr.
out = Console(highlight=False, markup=False)


def info(text: str, style: str | None = None) -> None:
    """Print ``text`` on stderr exactly as it is, in a Rich ``style`` if given ("bold", "dim", "red", "yellow" ...)."""
    console.print(text, style=style, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A bar on stderr (stdout stays clean for --json): done/total, a status, ETA and time elapsed."""
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]} ETA", markup=False),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False, disable=not enabled) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, status=""))


class _Bar:
    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def advance(self, status: str = "") -> None:
        self._progress.update(self._task, advance=1, status=status)

    def update(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed)
