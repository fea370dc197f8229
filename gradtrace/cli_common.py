"""What every ``gradtrace`` sub-command shares.

Each command module (``gradtrace.cli`` for the core verbs,
``gradtrace.unlearn.cli``, ``gradtrace.loop.cli``, ``gradtrace.diff.cli``)
exposes ``register(app)``; :mod:`gradtrace.cli` calls them all. A command's
body runs inside :func:`run_or_exit`, which turns a :class:`GradtraceError`
(a problem the user can fix) into a red message and exit status 2 instead of
a traceback.
"""

from __future__ import annotations

from typing import Any, Callable

import typer
from rich.console import Console

from .configbase import positive_int
from .errors import GradtraceError

#: Where commands print their tables and paths.
console = Console()


def run_or_exit(fn: Callable[[], Any]) -> Any:
    """``fn()``; a :class:`GradtraceError` prints ``error: ...`` on stderr and exits 2."""
    try:
        return fn()
    except GradtraceError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def warn(message: str) -> None:
    """One line ``warning: message`` on stderr."""
    Console(stderr=True).print(f"[bold yellow]warning:[/] {message}", markup=True, highlight=False)


def positive_option(value: int | None, option: str) -> int | None:
    """``value`` of the option named ``option`` (e.g. ``"--limit"``), which
    must be a positive integer when given (raises InputError otherwise)."""
    if value is not None:
        positive_int(value, option)
    return value


def progress_option() -> Any:
    """The ``--progress/--no-progress`` option every long-running command has."""
    return typer.Option(True, help="show progress bars")
