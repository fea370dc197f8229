"""Atomic, checksummed file writes: a reader sees a whole file or none."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..fingerprint import file_sha256

__all__ = ["TMP_MARK", "atomic_write_bytes", "write_temporary", "npy_bytes", "json_bytes", "file_sha256", "remove_stale_temporaries"]

TMP_MARK = ".tmp-"


def write_temporary(path: Path, data: bytes) -> tuple[Path, str]:
    """Write ``data`` (flushed to disk) to a temporary file beside ``path``,
    named for this process and thread; returns it and the sha256 of ``data``.
    The caller renames it into place or deletes it."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file and a rename;
    returns the sha256 of ``data``."""
    tmp, digest = write_temporary(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by an interrupted writer; returns how many."""
    count = 0
    for p in root.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink()
            count += 1
    return count
