"""Atomic file writes and JSONL files: a reader sees a whole file or none.

Every file gradtrace writes that a later run reads back (store shards and
manifests, caches, loop round files) goes through :func:`atomic_write_bytes`:
the data is written and flushed to a temporary file beside the target, named
for this process and thread, then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .fingerprint import stream_sha256

TMP_MARK = ".tmp-"


def write_temporary(path: Path, data: bytes) -> tuple[Path, str]:
    """Write ``data`` (flushed to disk) to a temporary file beside ``path``,
    named for this process and thread; returns it and the sha256 of ``data``.
    The caller renames it into place or deletes it."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file and a rename;
    returns the sha256 of ``data``."""
    path = Path(path)
    tmp, digest = write_temporary(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def temporary_path(path: Path) -> Path:
    """The temporary name beside ``path`` for this process and thread (its
    leftovers are found and removed by their :data:`TMP_MARK`)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")


def write_temporary_with(path: str | Path, write: Callable[[Path], None]) -> tuple[Path, str]:
    """Like :func:`write_temporary` for a file that a library writes itself
    (``write(tmp)``, e.g. ``faiss.write_index``): the temporary beside
    ``path`` is written, flushed to disk and hashed; returns it and its
    sha256. The caller renames it into place or deletes it; it is deleted
    here when ``write`` fails or is interrupted."""
    tmp = temporary_path(Path(path))
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
            digest = stream_sha256(fh)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest


def json_bytes(obj: Any) -> bytes:
    """Indented, key-sorted JSON with a final newline (manifests, records)."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def jsonl_bytes(records: Sequence[Mapping[str, Any]], sort_keys: bool = True) -> bytes:
    """One JSON object per line."""
    return "".join(json.dumps(dict(r), sort_keys=sort_keys) + "\n" for r in records).encode("utf-8")


def write_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]], sort_keys: bool = True) -> None:
    """Write ``records`` as JSONL, atomically."""
    atomic_write_bytes(Path(path), jsonl_bytes(records, sort_keys))
