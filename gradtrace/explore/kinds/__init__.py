"""One module per artefact kind; :data:`LOADERS` is the registry (first match wins).

To add a kind, see :mod:`gradtrace.explore.artefacts`."""

from __future__ import annotations

from .allocation import AllocationLoader
from .audit import AuditLoader
from .diff import DiffLoader
from .loop import LoopLoader
from .probes import ProbesLoader
from .store import StoreLoader

#: Loop and audit before diff: a loop run or an audit folder may hold a diff.json of its own;
#: allocation and probes last (they read a JSON file to tell).
LOADERS = (StoreLoader(), LoopLoader(), AuditLoader(), DiffLoader(), AllocationLoader(), ProbesLoader())

__all__ = ["LOADERS"]
