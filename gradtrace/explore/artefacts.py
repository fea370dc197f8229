"""The artefacts the explorer serves, and the registry of their loaders.

``gradtrace serve DIR...`` hands each path to the first loader whose
``detect`` accepts it. A loader turns a path into one or more
:class:`Artefact` objects (a loop run also yields one diff artefact per
round that has a ``diff.json``, an audit one for its diff). Each artefact gets an id (``store-0``,
``diff-1``, ``loop-0.round-3``): URLs carry ids and integer positions only,
never paths, so the app can serve nothing but what it was started on.

Kinds today (one module each under :mod:`gradtrace.explore.kinds`):

==========  ============================================  ========================
kind        detected by                                   module
==========  ============================================  ========================
store       ``manifest.json`` of a gradient store         ``kinds/store.py``
diff        ``diff.json`` (a file, or a folder with one)  ``kinds/diff.py``
loop        ``loop.json`` and ``round_000/``              ``kinds/loop.py``
audit       ``audit.json`` (a file, or a folder with      ``kinds/audit.py``
            one); its diff, when the folder holds it,
            is a diff artefact of its own
allocation  a ``.json`` of ``gradtrace allocate --out``   ``kinds/allocation.py``
            (``intervals``, ``params``, ``rule``,
            ``behaviour``)
probes      a ``.json`` of ``gradtrace probes run --out``  ``kinds/probes.py``
            (``model``, ``suite``, ``summary``,
            ``items``) or ``probes compare --out``
            (``a``, ``b``, ``correction``, ``alpha``,
            ``subtasks``); a loop run that ran the
            ``probes`` monitor yields one too
==========  ============================================  ========================

**Adding a kind**:
write ``kinds/<kind>.py`` with a subclass of :class:`Artefact` (its
``kind``, ``title``, the ``summary`` shown on the index page, :meth:`~Artefact.page`
returning a template name and its context, and :meth:`~Artefact.data` for
JSON the page script fetches) and a :class:`Loader` (``detect(path)`` and
``load(path, options, new_id)``), then add the loader to ``LOADERS`` in
``kinds/__init__.py``; templates go in ``explore/templates/``, figures in
:mod:`gradtrace.report.figures`. The app needs no change: it routes
``/a/<id>/``, ``/a/<id>/p/<name>[/<n>]`` and ``/a/<id>/data/<name>/<n>`` to
those two methods (with the query-string arguments and the integer ``n``). A path
that no loader accepts is refused with a message naming the kinds read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """What ``gradtrace serve`` was given besides the paths: ``task``, a
    TaskSpec target for stores made with ``--task``; ``queries``, a JSONL of
    LM queries to pick from (stores made with ``--hf-model``);
    ``max_queries``, how many of a task's queries are scored to find which
    queries each training example is a top proponent or opponent of."""

    task: str | None = None
    queries: str | None = None
    max_queries: int = 500
    k: int = 10


class Artefact:
    """One thing the explorer shows. Subclasses set ``kind`` and implement
    :meth:`page`; ``id`` is unique in the app, ``title`` is shown (escaped)."""

    kind: str = ""

    def __init__(self, id: str, title: str):
        self.id, self.title = id, title

    def summary(self) -> str:
        """One line for the index page."""
        return ""

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        """``(template, context)`` of the page ``name`` (``""``: the
        artefact's main page) with the query-string ``args`` and integer
        ``path_args``; raises :class:`NotFound` for anything else. Every
        value of the context is escaped by the template except those under
        the keys ``figure``, ``map`` and ``cumulative``, which must be
        markup made by :func:`gradtrace.report.figures.embed`."""
        raise NotFound(f"{self.kind} has no page {name!r}")

    def data(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> Any:
        """JSON data for the page's scripts (``/a/<id>/data/<name>/<n>``)."""
        raise NotFound(f"{self.kind} has no data {name!r}")


class NotFound(Exception):
    """A page, item or id the app does not have (HTTP 404)."""


class BadRequest(InputError):
    """A request the app cannot answer as asked (HTTP 400, message shown)."""


class Loader(Protocol):
    kind: str

    def detect(self, path: Path) -> bool: ...

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]: ...


def load_artefacts(paths: Sequence[str | Path], options: ServeOptions = ServeOptions(),
                   loaders: Sequence[Loader] | None = None) -> list[Artefact]:
    """The artefacts of ``paths`` (each detected by the first loader that
    accepts it); an InputError names a path no loader accepts."""
    if loaders is None:
        from .kinds import LOADERS

        loaders = LOADERS
    if not paths:
        raise InputError("serve needs at least one path (a store, a diff.json or its folder, a loop run folder, "
                         "an audit folder, an allocation JSON, a probe run or comparison JSON)")
    counts: dict[str, int] = {}

    def new_id(kind: str) -> str:
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        return f"{kind}-{n}"

    out: list[Artefact] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"serve: {str(raw)!r} does not exist")
        loader = next((l for l in loaders if l.detect(path)), None)
        if loader is None:
            raise InputError(
                f"serve: {str(raw)!r} is none of the kinds the explorer reads ({', '.join(l.kind for l in loaders)}): "
                "a gradient store (manifest.json), a diff (diff.json), a loop run (loop.json and round_000/), "
                "an audit (a folder with audit.json), an allocation (the JSON of gradtrace allocate --out), "
                "probe results (the JSON of gradtrace probes run --out or probes compare --out)"
            )
        out.extend(loader.load(path, options, new_id))
    return out
