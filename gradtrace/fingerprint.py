"""File fingerprints: has a checkpoint (or any file) changed since it was used?

A fingerprint is ``{"size", "mtime_ns", "sha256"}``. A directory (a Hugging
Face ``checkpoint-N`` folder) is fingerprinted through its weight files
(:data:`WEIGHT_PATTERNS`, top level only): ``size`` is their total,
``mtime_ns`` the latest, ``sha256`` the digest of their sorted
``name:sha256`` lines, and ``files`` keeps each file's own fingerprint so a
check can say which one changed.

:func:`fingerprint_change` is the fast check: a file whose size and
``mtime_ns`` equal the recorded ones is trusted without reading it; any other
is hashed again, so a file that was only touched (or copied with new times)
still passes when its bytes are the same.

Digests are cached per process by ``(size, mtime_ns, ctime_ns, inode,
device)`` (:func:`cached_sha256`): a file is read once while it stays as it
is and again as soon as any of those changes. Timestamps on most Linux file
systems advance in steps of a clock tick (a few ms), so a rewrite of a file's
bytes in place, to the same size, within one tick of hashing it can go
unseen by the cache; an atomic replace (a new inode) is always seen.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO, Mapping

HASH_BUFFER = 8 << 20  # bytes read per call: large reads keep hashing at memory speed
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "adapter_model.*", "optimizer.pt", "trainer_state.json")

_digests: dict[str, tuple[tuple[int, ...], str]] = {}
_digests_lock = threading.Lock()


def stream_sha256(fh: BinaryIO) -> str:
    """sha256 of everything from ``fh``'s current position to its end."""
    h = hashlib.sha256()
    buf = bytearray(HASH_BUFFER)
    view = memoryview(buf)
    while True:
        n = fh.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            return h.hexdigest()
        h.update(view[:n])


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, always read in full."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def cached_sha256(path: str | Path, fh: BinaryIO | None = None) -> str:
    """sha256 of a file, read at most once per process while its size, times
    and inode stay the same. Given ``fh`` (open on ``path``), that open file is
    hashed, so the digest belongs to exactly the file the caller reads."""
    if fh is None:
        with open(path, "rb") as own:
            return cached_sha256(path, own)
    key = os.path.abspath(path)
    stat = _stat_key(os.fstat(fh.fileno()))
    with _digests_lock:
        hit = _digests.get(key)
    if hit is not None and hit[0] == stat:
        return hit[1]
    position = fh.tell()
    fh.seek(0)
    digest = stream_sha256(fh)
    fh.seek(position)
    if _stat_key(os.fstat(fh.fileno())) == stat:  # not written to while we read it
        with _digests_lock:
            _digests[key] = (stat, digest)
    return digest


def forget_digests() -> None:
    """Empty the per-process digest cache (benchmarks, tests)."""
    with _digests_lock:
        _digests.clear()


def weight_files(directory: Path) -> list[Path]:
    """The files of a checkpoint folder that a fingerprint covers, by name."""
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in WEIGHT_PATTERNS)
    )


def _file_fingerprint(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": cached_sha256(path, fh)}


def _combined_sha256(files: Mapping[str, Mapping[str, Any]]) -> str:
    lines = "".join(f"{name}:{fp['sha256']}\n" for name, fp in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def checkpoint_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """``{size, mtime_ns, sha256}`` of a checkpoint file, or of a checkpoint
    folder's weight files (with ``files``: each one's fingerprint); None when
    ``path`` is neither (a name that only a custom loader understands)."""
    path = Path(path)
    if path.is_file():
        return _file_fingerprint(path)
    if path.is_dir():
        files = {p.name: _file_fingerprint(p) for p in weight_files(path)}
        return {
            "size": sum(f["size"] for f in files.values()),
            "mtime_ns": max((f["mtime_ns"] for f in files.values()), default=0),
            "sha256": _combined_sha256(files),
            "files": files,
        }
    return None


def _file_change(path: Path, recorded: Mapping[str, Any]) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{str(path)!r} no longer exists"
    if not path.is_file():
        return f"{str(path)!r} is no longer a file"
    if st.st_size == recorded["size"] and st.st_mtime_ns == recorded["mtime_ns"]:
        return None
    digest = cached_sha256(path)
    if digest == recorded["sha256"]:
        return None
    return (
        f"{str(path)!r} has other contents (size {recorded['size']} -> {st.st_size}, "
        f"sha256 {recorded['sha256'][:12]}... -> {digest[:12]}...)"
    )


def fingerprint_change(path: str | Path, recorded: Mapping[str, Any]) -> str | None:
    """None when ``path`` still matches its ``recorded`` fingerprint, else
    what changed (one line). Files whose size and mtime_ns are unchanged are
    trusted; others are hashed again."""
    path = Path(path)
    if "files" not in recorded:
        return _file_change(path, recorded)
    if not path.is_dir():
        return f"{str(path)!r} is no longer a directory"
    now = [p.name for p in weight_files(path)]
    before = sorted(recorded["files"])
    if now != before:
        added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
        return f"{str(path)!r}: weight files added {added}, removed {removed}"
    for name in before:
        change = _file_change(path / name, recorded["files"][name])
        if change is not None:
            return change
    return None
