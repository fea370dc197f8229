"""One module per artefact kind; :data:`LOADERS` is the registry (first match wins).

To add a kind, see :mod:`gradtrace.explore.artefacts`."""

from __future__ import annotations

from .diff import DiffLoader
from .loop import LoopLoader
from .store import StoreLoader

#: Loop before diff: a loop run folder may hold a diff.json of its own.
LOADERS = (StoreLoader(), LoopLoader(), DiffLoader())

__all__ = ["LOADERS"]
