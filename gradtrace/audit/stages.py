"""Stages of an audit cached on disk by a hash of their settings and inputs.

Each finished stage is one JSON file ``stages/<name>-<key>.json`` written
atomically (a temporary file, then a rename), so a killed audit leaves whole
stages or none; a rerun with the same settings and inputs reads them back
instead of computing, and a change of any setting or input gives another key.
:attr:`StageCache.computed` and :attr:`StageCache.reused` count, per stage
name, what this process computed and what it read back.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_bytes
from ..unlearn.cache import fingerprint


class StageCache:
    def __init__(self, root: str | Path):
        self.dir = Path(root) / "stages"
        self.computed: collections.Counter[str] = collections.Counter()
        self.reused: collections.Counter[str] = collections.Counter()

    def path(self, name: str, key: str) -> Path:
        return self.dir / f"{name}-{key}.json"

    def done(self, name: str, parts: Any) -> bool:
        """Whether the stage ``name`` for ``parts`` is on disk (a :meth:`run` would read it back)."""
        return self.path(name, fingerprint(name, parts)).is_file()

    def run(self, name: str, parts: Any, compute: Callable[[], Any]) -> Any:
        """The stage ``name`` for ``parts`` (settings and input fingerprints):
        read back when done before, else ``compute()``d and written."""
        key = fingerprint(name, parts)
        path = self.path(name, key)
        if path.is_file():
            self.reused[name] += 1
            return json.loads(path.read_text(encoding="utf-8"))
        value = compute()
        data = json.dumps(value, allow_nan=False, sort_keys=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.encode("utf-8"))
        self.computed[name] += 1
        return json.loads(data)  # the same values as a rerun reads back
