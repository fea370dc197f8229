"""Who may change a store, and when: OS file locks (``fcntl.flock``).

Two locks per store directory, both advisory ``flock`` locks that the OS drops
when their process dies (a crashed writer never leaves a store locked):

* the **manifest lock**, exclusive and short: taken on the store directory
  itself (no file is created; where the file system refuses to lock a
  directory, on ``.gradtrace-manifest.lock`` instead). Every change of
  ``manifest.json`` (create, add_segment, discard_unwritten, recording
  checkpoint fingerprints), every shard commit (the renames that publish a
  shard and its record) and :meth:`GradientStore.repair` run under it, after
  reading the manifest again from disk. Re-entrant within a thread.
* the **writers lock**, on ``.gradtrace-writers.lock``: every writing session
  (:func:`open_for_writing`, i.e. a featurize run) holds it *shared* for as
  long as it writes. A session that, under the manifest lock, gets it
  *exclusive* knows no other writer is running, and only such a session may
  discard a store that holds no shard yet, delete temporaries left by
  interrupted writers, or replace a store made with other settings. It then
  turns its lock into a shared one while still holding the manifest lock (so
  nobody can slip in between; ``flock`` conversions are not atomic).

So a second featurize on one directory with *other* settings gets a
:class:`~gradtrace.errors.ConfigMismatchError` saying that another process
is writing the store (never a discard under a running writer), and one with
the *same* settings joins: both write the shards they find missing. A shard
is deterministic in its settings, its files are written to per-process,
per-thread temporaries and published under the manifest lock only if no
record exists yet, so when both compute a shard the second result is simply
dropped: duplicated work, never mixed files. (Per-shard claims would avoid
the duplicated work for independent processes, at the cost of a lock file
per shard; a distributed run splits the work statically instead, below.)

A ``torch.distributed`` featurize
(:class:`gradtrace.execution_dist.DistributedExecutor`) uses the same
mechanism: every rank calls :func:`open_for_writing` with the same settings
and the same ``prepare`` (which finds or adds the data's segment under the
manifest lock), rank 0 first (it creates the store, records the checkpoint
fingerprints, repairs and cleans, alone) and the others after a barrier
(they find it, check it and join as shared writers). Rank 0's list of
missing shards is then broadcast and rank ``r`` computes the entries ``i``
with ``i % world_size == r``, calling ``write_shard`` for those; a rerun
computes only what is still missing. Linux NFS clients emulate ``flock``
with byte-range locks, which cannot lock a directory: the manifest lock then
falls back to its lock file. Where locks do not reach across machines at
all, the barriers above still order the opening, and ranks never write the
same shard.

Windows has no ``fcntl``: there the locks are no-ops and a one-line warning
says that concurrent writers to one store are not detected.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

from ..errors import StoreError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST_LOCK = ".gradtrace-manifest.lock"
WRITERS_LOCK = ".gradtrace-writers.lock"
LOCK_FILES = (MANIFEST_LOCK, WRITERS_LOCK)
DEFAULT_TIMEOUT = 600.0
_POLL = 0.02
# errors of file systems that cannot flock a directory (NFS emulates flock with byte-range locks)
_NO_DIR_LOCK = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP}

_state = threading.local()
_warned = []


def locking_available() -> bool:
    if fcntl is None and not _warned:
        _warned.append(True)
        warnings.warn(
            "gradtrace: file locks need fcntl (Linux, macOS); on this platform two featurize runs "
            "writing one store at once are not detected", RuntimeWarning, stacklevel=3,
        )
    return fcntl is not None


def _acquire(fd: int, mode: int, what: Path, timeout: float | None) -> None:
    """flock ``fd`` in ``mode``, polling until ``timeout`` seconds (None: forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise StoreError(
                    f"the lock {str(what)!r} has been held by another gradtrace process for more than {timeout:.0f} s; "
                    "wait for it to finish (the OS releases the lock when it exits), or pass a longer timeout"
                ) from None
            time.sleep(_POLL)


def _held() -> dict[str, list[int]]:
    """This thread's manifest locks: resolved root -> [fd, depth]."""
    if not hasattr(_state, "held"):
        _state.held = {}
    return _state.held


def _alone() -> set[str]:
    """Roots whose writers lock this thread holds exclusively."""
    if not hasattr(_state, "alone"):
        _state.alone = set()
    return _state.alone


def _open_manifest_lock(root: Path) -> int:
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # probe: can this file system lock a directory?
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd
    except BlockingIOError:
        return fd  # it can; someone holds it exclusively right now
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _NO_DIR_LOCK:
            raise
    return os.open(root / MANIFEST_LOCK, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def manifest_lock(root: str | Path, timeout: float | None = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold the store's manifest lock (exclusive; re-entrant in a thread).
    ``root`` must exist."""
    key = str(Path(root).resolve())
    held = _held()
    if key in held:
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    if not locking_available():
        yield
        return
    fd = _open_manifest_lock(Path(key))
    try:
        _acquire(fd, fcntl.LOCK_EX, Path(key), timeout)
        held[key] = [fd, 1]
        try:
            yield
        finally:
            del held[key]
    finally:
        os.close(fd)  # closing drops the lock


def other_writers_active(root: str | Path) -> bool:
    """Whether a writing session other than this thread's holds the store.
    Call with the manifest lock held (no session can start meanwhile)."""
    key = str(Path(root).resolve())
    if key in _alone() or not (Path(key) / WRITERS_LOCK).exists():
        return False
    probe = WritersLock(key)
    try:
        return not probe.try_exclusive()
    finally:
        probe.release()


class WritersLock:
    """One writing session's hold on ``.gradtrace-writers.lock``."""

    def __init__(self, root: str | Path):
        self.key = str(Path(root).resolve())
        self.path = Path(self.key) / WRITERS_LOCK
        self.fd: int | None = None
        self.exclusive = False
        if locking_available():
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_exclusive(self) -> bool:
        """Take the lock exclusively if no other writer holds it; returns whether it did.
        Without fcntl, pretends it did (no other writer can be seen)."""
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        self.exclusive = True
        _alone().add(self.key)
        return True

    def share(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Hold the lock shared (from exclusive, or from nothing). Call with the
        manifest lock held: then no other session can take it in between."""
        if self.fd is not None:
            _acquire(self.fd, fcntl.LOCK_SH, self.path, timeout)
        self._not_alone()

    def _not_alone(self) -> None:
        if self.exclusive:
            _alone().discard(self.key)
        self.exclusive = False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._not_alone()
