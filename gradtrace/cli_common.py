"""What every ``gradtrace`` sub-command shares.

Each command module (``gradtrace.cli`` for the core verbs,
``gradtrace.unlearn.cli``, ``gradtrace.loop.cli``, ``gradtrace.diff.cli``,
``gradtrace.allocate.cli``)
exposes ``register(app)``; :mod:`gradtrace.cli` calls them all. A command's
body runs inside :func:`run_or_exit`, which turns a :class:`GradtraceError`
(a problem the user can fix) or an ``OSError`` (a file that cannot be
written) into ``error: ...`` on stderr and exit status 2 instead of a
traceback, and Python warnings into ``warning: ...`` lines.

Output. Ids, tags, texts, paths and error messages are untrusted: everything
a command prints goes through :data:`console` (or :func:`warn`/:func:`error`),
which shows strings as plain text with control characters escaped
(:func:`gradtrace.textsafe.for_terminal`) and never parses them as Rich
markup. On a terminal, tables are Rich tables. When stdout is not a terminal
(a pipe, a file, a test runner) the output is plain and does not depend on
any width: no colour codes, no line ever wrapped, and tables printed as their
title line, then tab-separated header and rows. ``--json`` prints one JSON
object instead (:func:`print_json`).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .configbase import positive_int
from .errors import GradtraceError, InputError
from .textsafe import for_terminal

#: Width given to Rich when the output is not a terminal, so that nothing it
#: renders (other than the tables printed as rows) is cut or wrapped.
PLAIN_WIDTH = 10_000


class Output:
    """stdout (or stderr) for a command's results, safe for untrusted text."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    @property
    def file(self) -> TextIO:
        """The stream as it is now (a test runner replaces sys.stdout per call)."""
        return sys.stderr if self.stderr else sys.stdout

    def is_terminal(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty is not None and isatty())
        except ValueError:  # a closed stream
            return False

    def rich(self) -> Console:
        """A Rich console on the stream: markup, emoji codes and highlighting
        off; off a terminal also colour and wrapping."""
        common = dict(file=self.file, markup=False, emoji=False, highlight=False)
        if self.is_terminal():
            return Console(**common)  # type: ignore[arg-type]
        return Console(**common, color_system=None, soft_wrap=True, width=PLAIN_WIDTH)  # type: ignore[arg-type]

    def print(self, *objects: Any, style: str | None = None) -> None:
        """Each string as plain text (control characters escaped, newlines
        kept, never markup); each table as a table on a terminal and as
        tab-separated rows elsewhere; other Rich renderables (a ``Text``
        made safe by the caller) as they are."""
        console = self.rich()
        for obj in objects:
            if isinstance(obj, str):
                console.print(Text(for_terminal(obj, keep_newlines=True), style=style or ""))
            elif isinstance(obj, Table) and not self.is_terminal():
                self.file.write(plain_table(obj))
            else:
                console.print(obj)

    def labelled(self, label: str, label_style: str, message: object) -> None:
        """``label`` (styled on a terminal) followed by ``message`` as plain text."""
        text = Text.assemble((label, label_style), for_terminal(message, keep_newlines=True))
        self.rich().print(text)


#: Where commands print their tables and summaries.
console = Output()
_stderr = Output(stderr=True)


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A Rich table whose title, headers and cells are shown as plain text
    (escaped, never markup); print it with ``console.print``."""
    out = Table(title=Text(for_terminal(title)))
    for header in headers:
        out.add_column(Text(for_terminal(header)))
    for row in rows:
        out.add_row(*(Text(for_terminal(cell)) for cell in row))
    return out


def _cell_text(cell: Any) -> str:
    # a Text is made safe by whoever made it (see table()); anything else is escaped here
    return cell.plain if isinstance(cell, Text) else for_terminal(cell)


def plain_table(t: Table) -> str:
    """A table as text for scripts: the title line, then the header and each
    row with cells separated by tabs (a tab or newline inside a cell is
    escaped, so every row is one line)."""
    lines = [] if t.title is None else [_cell_text(t.title)]
    lines.append("\t".join(_cell_text(c.header) for c in t.columns))
    columns = [list(c.cells) for c in t.columns]
    for r in range(t.row_count):
        lines.append("\t".join(_cell_text(col[r]) if r < len(col) else "" for col in columns))
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    """``value`` with paths as strings and non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def jsonable(value: Any) -> Any:
    """``value`` ready for ``json.dumps``: paths as strings, non-finite floats as None, numpy scalars as Python ones."""
    return _jsonable(value)


def print_json(data: Any) -> None:
    """One JSON object on stdout (ASCII only: control characters arrive escaped)."""
    sys.stdout.write(json.dumps(_jsonable(data), indent=1) + "\n")


def json_option() -> Any:
    """The ``--json`` option of every command that prints a summary."""
    return typer.Option(False, "--json", help="print one JSON object on stdout instead of tables")


def error(message: object) -> None:
    """``error: message`` on stderr, the message as plain text."""
    _stderr.labelled("error: ", "bold red", message)


def warn(message: object) -> None:
    """One line ``warning: message`` on stderr, the message as plain text."""
    _stderr.labelled("warning: ", "bold yellow", message)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    warn(f"{message}" if issubclass(category, UserWarning) else f"{category.__name__}: {message}")


def run_or_exit(fn: Callable[[], Any]) -> Any:
    """``fn()``; a :class:`GradtraceError` or ``OSError`` prints ``error: ...``
    on stderr and exits 2. Python warnings raised meanwhile are printed by
    :func:`warn` (as plain text)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return fn()
    except GradtraceError as exc:
        error(exc)
    except OSError as exc:
        error(f"{type(exc).__name__}: {exc}")
    raise typer.Exit(2)


def positive_option(value: int | None, option: str) -> int | None:
    """``value`` of the option named ``option`` (e.g. ``"--limit"``), which
    must be a positive integer when given (raises InputError otherwise)."""
    if value is not None:
        positive_int(value, option)
    return value


#: Registered score methods that need inputs a command line cannot give.
PYTHON_ONLY_METHODS = {
    "adam": "optimizer states (one optimizer.state_dict() per checkpoint)",
    "trackstar": "optimizer states (one optimizer.state_dict() per checkpoint)",
}


def variant_help() -> str:
    """The help text of every command's ``--variant`` option: the registered score methods."""
    from .scoring import available_methods

    names = " | ".join(available_methods())
    extra = "; ".join(f"{m} needs {what}: Python API only" for m, what in PYTHON_ONLY_METHODS.items())
    return f"score method: {names}" + (f" ({extra})" if extra else "")


def check_variant(variant: str) -> str:
    """``variant`` when the command line can score with it (InputError otherwise)."""
    from .scoring import available_methods

    names = available_methods()
    if variant not in names:
        raise InputError(f"--variant must be one of {', '.join(names)}; got {variant!r}")
    if variant in PYTHON_ONLY_METHODS:
        raise InputError(
            f"--variant {variant} needs {PYTHON_ONLY_METHODS[variant]}, which the command line cannot pass; "
            f"use it from Python (gradtrace.scoring.methods) or another variant: "
            f"{', '.join(n for n in names if n not in PYTHON_ONLY_METHODS)}"
        )
    return variant


def progress_option() -> Any:
    """The ``--progress/--no-progress`` option every long-running command has."""
    return typer.Option(True, help="show progress bars")


def output_file(path: Path | None, option: str, suffixes: Sequence[str] = ()) -> Path | None:
    """``path`` when a file can be written there (checked before any work):
    not a folder, in a folder that exists, ending in one of ``suffixes`` when
    given. Raises InputError naming ``option`` and the path."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; it must name a file")
    if suffixes and path.suffix not in suffixes:
        raise InputError(f"{option} must end in {' or '.join(suffixes)}; got {path.name!r}")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{option} {str(path)!r}: the folder {str(parent)!r} {what}; create it first or choose another path")
    return path


def output_dir(path: Path, option: str) -> Path:
    """``path`` when it is a folder or can be created as one (checked before
    any work). Raises InputError naming ``option`` and the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a file; it must be a folder (created when missing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {str(path)!r}: {str(parent)!r} is a file, so the folder cannot be created")
            break
    return path


def device_option() -> Any:
    """``--device`` of the commands that compute on a model or a store."""
    return typer.Option(
        "auto", help="auto (cuda if available, else cpu) | cpu | cuda | cuda:N; under torchrun/srun each rank takes cuda:LOCAL_RANK",
    )
