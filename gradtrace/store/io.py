"""Atomic, checksummed file writes: a reader sees a whole file or none."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

TMP_MARK = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file and a rename;
    returns the sha256 of ``data``."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hashlib.sha256(data).hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by an interrupted writer; returns how many."""
    count = 0
    for p in root.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink()
            count += 1
    return count
