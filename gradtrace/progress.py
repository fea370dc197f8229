"""Progress display for long work: a rich bar, or nothing."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Progress(Protocol):
    def advance(self, n: int) -> None: ...
    def note(self, text: str) -> None: ...


class _Silent:
    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class _Rich:
    def __init__(self, bar: object, task: object, console: object):
        self._bar, self._task, self._console = bar, task, console

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)  # type: ignore[attr-defined]

    def note(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)  # type: ignore[attr-defined]


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Progress]:
    """A progress bar on stderr while ``enabled``; otherwise a silent stand-in."""
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with RichProgress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield _Rich(bar, task, console)
