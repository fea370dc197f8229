"""Progress display for long work: a rich bar, or nothing.

Descriptions and notes may carry untrusted text (a method name, a path): they
are shown as plain text with control characters escaped, never as markup."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

from .textsafe import for_terminal


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
        # soft_wrap: a note is never broken mid-sentence, whatever the width (a terminal folds it itself)
        self._console.print(for_terminal(text), highlight=False, markup=False, emoji=False, soft_wrap=True)  # type: ignore[attr-defined]


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Progress]:
    """A progress bar on stderr while ``enabled``; otherwise a silent stand-in."""
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True, markup=False, emoji=False, highlight=False)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with RichProgress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(for_terminal(description), total=total)
        yield _Rich(bar, task, console)


def human_bytes(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ... (for estimates before long work)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
