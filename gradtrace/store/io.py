"""The store's file helpers: atomic writes (from :mod:`gradtrace.fileio`), ``.npy`` bytes, checksums."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..fileio import TMP_MARK, atomic_write_bytes, json_bytes, write_temporary
from ..fingerprint import file_sha256

__all__ = ["TMP_MARK", "atomic_write_bytes", "write_temporary", "npy_bytes", "json_bytes", "file_sha256", "remove_stale_temporaries"]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by an interrupted writer; returns how many."""
    count = 0
    for p in root.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink()
            count += 1
    return count
