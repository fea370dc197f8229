"""On-disk cache of finished pieces of a long run, so a killed run resumes.

Long experiments (removal-and-retrain over seeds, method comparisons) write
each finished piece -- one seed and arm, one method -- as a small JSON file
(and, where later pieces need it, a model's state dict) under a directory
named by a hash of every setting and input that determines the result. A
re-run with the same settings finds the finished pieces and computes only
the rest; a run with other settings gets another directory, so stale
results are never reused. Files are written to a temporary name and
renamed, so a kill mid-write leaves no half-written piece.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import hash_into
from ..fileio import atomic_write_bytes


def fingerprint(*parts: Any) -> str:
    """A hex digest of JSON-able settings and tensors/arrays (by content)."""
    h = hashlib.sha256()
    for part in parts:
        hash_into(h, part)
    return h.hexdigest()[:20]


class ResultCache:
    """JSON pieces (and state dicts) under ``root/key``; ``root=None`` caches
    nothing (every ``get`` misses, every ``put`` is a no-op)."""

    def __init__(self, root: str | Path | None, key: str):
        self.dir = Path(root) / key if root is not None else None
        self.hits = 0

    def _path(self, name: str, suffix: str) -> Path:
        assert self.dir is not None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.dir / f"{safe}{suffix}"

    def get(self, name: str) -> Any | None:
        if self.dir is None or not self._path(name, ".json").exists():
            return None
        self.hits += 1
        return json.loads(self._path(name, ".json").read_text(encoding="utf-8"))

    def put(self, name: str, value: Any) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._path(name, ".json"), json.dumps(value).encode("utf-8"))

    def get_model(self, name: str, model: nn.Module) -> bool:
        """Load the cached state dict ``name`` into ``model``; False if absent."""
        if self.dir is None or not self._path(name, ".pt").exists():
            return False
        model.load_state_dict(torch.load(self._path(name, ".pt"), weights_only=True))
        self.hits += 1
        return True

    def put_model(self, name: str, model: nn.Module) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(self._path(name, ".pt"), buf.getvalue())
