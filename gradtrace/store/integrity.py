"""Reading shard files only as what the manifest says they are.

Every open of a shard file checks its ``.npy`` header (shape, dtype, C
order) against the shape and dtype the manifest implies and its size against
the header (a truncated file never reaches ``mmap``). With verification on
(the default), the bytes are also checked against the sha256 in the shard's
record, once per process per file version (see
:func:`gradtrace.fingerprint.cached_sha256`); the digest is taken of the very
file that is then mapped, not of whatever the path names a moment later.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..fingerprint import cached_sha256

REPAIR_HINT = "re-run featurize with the same arguments: it rewrites shards that fail their checks"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ShardFileError(StoreError):
    """A shard's record or one of its files is missing, malformed or fails its checksum."""

    def __init__(self, path: Path, problem: str, where: str = ""):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"shard file {str(path)!r}{where} {problem}; {REPAIR_HINT}")


def read_shard_record(path: Path, ckpt: int, start: int, stop: int, names: tuple[str, str]) -> dict[str, str]:
    """The ``{file name: sha256}`` of a shard record, checked: a JSON object
    naming this checkpoint and row range and a sha256 for each of ``names``."""
    return _load_record(path, ckpt, start, stop, names)["sha256"]


def read_shard_skipped(path: Path, ckpt: int, start: int, stop: int, names: tuple[str, str]) -> list[tuple[int, str]]:
    """``(example index, problem)`` of the examples a shard record lists as
    skipped (non-finite; their rows and norms are zeros); none in records
    that have no ``skipped`` field (every store written before it existed)."""
    return [(int(e["index"]), str(e["reason"])) for e in _load_record(path, ckpt, start, stop, names).get("skipped", [])]


def _load_record(path: Path, ckpt: int, start: int, stop: int, names: tuple[str, str]) -> dict:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardFileError(path, "is missing (the shard is not written)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardFileError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ShardFileError(path, f"must hold a JSON object; got {type(record).__name__}")
    for field, want in (("checkpoint", ckpt), ("start", start), ("stop", stop)):
        if record.get(field) != want or isinstance(record.get(field), bool):
            raise ShardFileError(path, f"field {field!r} must be {want} (from its file name); got {record.get(field)!r}")
    digests = record.get("sha256")
    if not isinstance(digests, dict) or sorted(digests) != sorted(names):
        got = sorted(digests) if isinstance(digests, dict) else digests
        raise ShardFileError(path, f"field 'sha256' must map exactly {sorted(names)} to checksums; got {got!r}")
    for name, digest in digests.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ShardFileError(path, f"field 'sha256.{name}' must be 64 lowercase hex digits; got {digest!r}")
    skipped = record.get("skipped", [])
    seen: set[int] = set()
    for i, entry in enumerate(skipped if isinstance(skipped, list) else [None]):
        index = entry.get("index") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict) or sorted(entry) != ["index", "reason"] or not isinstance(entry["reason"], str)
            or not isinstance(index, int) or isinstance(index, bool) or not start <= index < stop or index in seen
        ):
            raise ShardFileError(
                path, f"field 'skipped[{i}]' must be {{'index': a new row in [{start}, {stop}), 'reason': a string}}; got {entry!r}"
            )
        seen.add(index)
    return record


def check_finite_norms(path: Path, norms: np.ndarray, start: int, where: str = "") -> None:
    """Raise :class:`ShardFileError` unless every norm of a shard is finite
    (a store written before gradtrace refused non-finite gradients may hold NaN)."""
    finite = np.isfinite(norms)
    if not finite.all():
        row = int(np.nonzero(~finite.all(axis=1))[0][0])
        raise ShardFileError(
            path,
            f"holds a non-finite gradient norm for example {start + row} ({norms[row].tolist()}): it was written by a "
            "gradtrace that did not check for non-finite values, and every score involving it is NaN",
            where,
        )


def open_npy(
    path: Path, shape: tuple[int, int], dtype: np.dtype, sha256: str | None, *, mmap: bool, where: str = "",
) -> np.ndarray:
    """The array in ``path``, checked to be ``shape`` ``dtype`` in C order and
    of the size its header implies, and (when ``sha256`` is given) to match
    that checksum. Memory-mapped read-only if ``mmap``, else read in full."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise ShardFileError(path, "is missing", where) from None
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} (gradtrace writes 1.0)")
            header = read_header(fh)  # (shape, fortran_order, dtype)
        except Exception as exc:  # numpy raises ValueError, OSError and others for a damaged header
            raise ShardFileError(path, f"is not a readable .npy file ({exc})", where) from None
        got_shape, fortran, got_dtype = header
        if tuple(got_shape) != tuple(shape) or got_dtype != dtype or fortran:
            raise ShardFileError(
                path,
                f"has a .npy header of shape {tuple(got_shape)} {got_dtype}{' (Fortran order)' if fortran else ''}; "
                f"the manifest implies shape {tuple(shape)} {dtype}",
                where,
            )
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
        need = offset + int(np.prod(shape)) * dtype.itemsize
        if size != need:
            raise ShardFileError(path, f"is {size} bytes; its header and shape {tuple(shape)} {dtype} need {need}", where)
        if sha256 is not None:
            digest = cached_sha256(path, fh)
            if digest != sha256:
                raise ShardFileError(
                    path, f"does not match its recorded checksum (sha256 {digest[:12]}..., recorded {sha256[:12]}...)", where
                )
        if mmap:
            return np.memmap(fh, dtype=got_dtype, mode="r", offset=offset, shape=tuple(shape))
        fh.seek(offset)
        return np.fromfile(fh, dtype=got_dtype, count=int(np.prod(shape))).reshape(shape)


def describe(exc: StoreError) -> str:
    """A shard problem in a few words (for lists of problems)."""
    if isinstance(exc, ShardFileError):
        return f"{exc.path.name}: {exc.problem}"
    return str(exc)
